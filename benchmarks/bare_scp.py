"""The issue's second reference receiver: a bare pynetdicom storage SCP that writes the raw
received bytes (``event.encoded_dataset()``: file meta plus the data set as it came over the
wire) to one file per instance, with an fsync per instance when asked. Nothing else: no
checks, no index. ``benchmarks/ingest.py`` runs it beside storescp and ctnode, so that the
issue's targets, set against such a receiver on another machine, can be read against it on
this one.

    python benchmarks/bare_scp.py PORT DIR [--fsync]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.events import Event

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scp.sop_classes import CT_STORAGE, TRANSFER_SYNTAXES  # noqa: E402 (what ctnode accepts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--fsync", action="store_true", help="fsync each file before Success")
    args = parser.parse_args()
    counter = itertools.count()
    lock = threading.Lock()

    def handle_store(event: Event) -> int:
        with lock:
            number = next(counter)
        path = args.directory / f"{number:08d}.dcm"  # a counter, never a DICOM value
        with open(path, "wb") as fh:
            fh.write(event.encoded_dataset())
            if args.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        return 0x0000

    ae = AE(ae_title="BARESCP")
    ae.maximum_associations = 16
    ae.maximum_pdu_size = 1 << 20  # ctnode's default; pynetdicom's 16 kB made it 25 % slower
    for sop_class in sorted(CT_STORAGE):
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    ae.start_server(("127.0.0.1", args.port), evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
