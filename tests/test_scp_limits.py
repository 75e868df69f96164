"""Black box: every limit of the storage SCP, hit by a hostile peer over a raw socket.

One ``ctnode serve`` with small limits serves the whole module. Each test checks what the
peer sees (PS3.8: A-ASSOCIATE-RJ, A-ABORT with its source and reason, a closed connection,
or a C-STORE status), the node's log line, that nothing is left in the spool, and then that
a normal DCMTK storescu push still succeeds and the node's memory stays under
``RSS_BOUND_MIB``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scp import upper_layer as ul
from tests import hostile_peer as peer
from tests.factory import ct_series
from tests.node_process import NodeProcess, require

RSS_BOUND_MIB = 300  # the node idles at about 110 MiB; a leak of one attack's data shows
ACSE, DIMSE = 2.0, 2.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    require("storescu")
    folder = tmp_path_factory.mktemp("limits")
    process = NodeProcess(
        folder / "data",
        scp__acse_timeout=str(ACSE),
        scp__dimse_timeout=str(DIMSE),
        scp__network_timeout="4",
        scp__max_unassociated="4",
        scp__max_unassociated_per_address="2",
        scp__max_associations="4",
        scp__max_associations_per_address="2",
        scp__max_command_bytes="4096",
        scp__max_instance_mb="1",
        worker__count="0",
        api__enabled="false",
    ).start()
    yield process
    process.stop()


@pytest.fixture
def push(node: NodeProcess, tmp_path: Path) -> Iterator[None]:
    """After the attack: a normal push succeeds, nothing half-written remains, memory holds."""
    yield
    time.sleep(0.5)  # the closed connections' threads end
    files = []
    for k, ds in enumerate(ct_series(2, 32, 32, seed=f"push-{tmp_path.name}")):
        files.append(tmp_path / f"{k}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    result = node.storescu(files, check=False)
    assert result.returncode == 0, result.stderr
    assert list((node.data_dir / "tmp").iterdir()) == []
    assert node.proc is not None
    assert peer.rss_mib(node.proc.pid) < RSS_BOUND_MIB


def _closed_at_once(port: int, source: str) -> bool:
    sock = peer.connect(port, source, timeout=5)
    with sock:
        started = time.monotonic()
        answer = peer.read_answer(sock)
        return answer.kind == 0 and time.monotonic() - started < 1.0


@pytest.mark.usefixtures("push")
def test_unassociated_connections_have_their_own_small_limit(node: NodeProcess) -> None:
    idle = [peer.connect(node.port, "127.0.0.2"), peer.connect(node.port, "127.0.0.2")]
    time.sleep(0.2)
    assert _closed_at_once(node.port, "127.0.0.2"), "per-address limit (2)"
    idle += [peer.connect(node.port, "127.0.0.3"), peer.connect(node.port, "127.0.0.3")]
    time.sleep(0.2)
    assert _closed_at_once(node.port, "127.0.0.4"), "limit in all (4)"
    # the association limits are untouched: once the idle ones hit the ACSE deadline,
    # everyone is served again, and the idle connections were closed without an answer
    started = time.monotonic()
    assert [peer.read_answer(sock).kind for sock in idle] == [0, 0, 0, 0]
    assert time.monotonic() - started < ACSE + 1.5
    for sock in idle:
        sock.close()
    assert "closed at once" in node.log_text()


@pytest.mark.usefixtures("push")
def test_a_trickled_associate_request_does_not_renew_the_deadline(node: NodeProcess) -> None:
    sock = peer.connect(node.port, "127.0.0.5")
    with sock:
        took = peer.trickle(sock, peer.associate_rq(), interval=0.3, limit=ACSE * 4)
    assert took < ACSE + 1.5  # one byte every 0.3 s would take a minute
    assert "no A-ASSOCIATE-RQ within acse_timeout" in node.log_text()


@pytest.mark.usefixtures("push")
def test_a_trickled_pdu_does_not_renew_the_dimse_deadline(node: NodeProcess) -> None:
    ds = ct_series(1, 32, 32, seed="trickle")[0]
    sock, answer = peer.associate(node.port)
    with sock:
        assert answer.kind == ul.ASSOCIATE_AC
        sock.sendall(peer.p_data(peer.pdv(1, 0x03, peer.store_command(str(ds.SOPInstanceUID)))))
        took = peer.trickle(sock, peer.p_data(peer.pdv(1, 0x02, peer.encoded(ds))), 0.3, DIMSE * 4)
        assert took < DIMSE + 1.5
        assert peer.read_answer(sock).abort == (ul.SERVICE_USER, 0)


@pytest.mark.usefixtures("push")
def test_association_limits_in_all_and_per_address(node: NodeProcess) -> None:
    held = [peer.associate(node.port, source="127.0.0.6") for _ in range(2)]
    assert [answer.kind for _, answer in held] == [ul.ASSOCIATE_AC] * 2
    sock, answer = peer.associate(node.port, source="127.0.0.6")
    sock.close()
    assert answer.rejection == (2, 3, 2)  # transient, local limit exceeded
    held += [peer.associate(node.port, source="127.0.0.7") for _ in range(2)]
    assert [answer.kind for _, answer in held] == [ul.ASSOCIATE_AC] * 4
    sock, answer = peer.associate(node.port, source="127.0.0.8")
    sock.close()
    assert answer.rejection == (2, 3, 2)
    for sock, _ in held:
        sock.sendall(ul.pdu(ul.RELEASE_RQ, b"\0\0\0\0"))
        assert peer.read_answer(sock).kind == ul.RELEASE_RP
        sock.close()
    assert "(max_associations_per_address)" in node.log_text()


@pytest.mark.usefixtures("push")
def test_command_fragments_without_end_are_bounded(node: NodeProcess) -> None:
    """The issue's 400 MB of command fragments: the SCP stops at max_command_bytes."""
    sock, _ = peer.associate(node.port)
    with sock:
        fragment = peer.p_data(peer.pdv(1, 0x01, b"\0" * 60_000))
        sent = 0
        try:
            for _ in range(1000):  # up to 60 MB
                sock.sendall(fragment)
                sent += len(fragment)
        except OSError:
            pass
        assert sent < 5_000_000
        assert peer.read_answer(sock).abort == (ul.SERVICE_USER, 0)
    assert "command set over 4096 bytes" in node.log_text()


@pytest.mark.usefixtures("push")
def test_data_set_over_the_size_limit_gets_out_of_resources(node: NodeProcess) -> None:
    big = ct_series(1, 1024, 1024, seed="big")[0]  # 2 MiB of pixels, over max_instance_mb
    small = ct_series(1, 32, 32, seed="small-after-big")[0]
    sock, _ = peer.associate(node.port)
    with sock:
        assert peer.store(sock, big).status == 0xA700
        assert list((node.data_dir / "tmp").iterdir()) == []
        assert peer.store(sock, small, message_id=2).status == 0x0000  # the association goes on


@pytest.mark.usefixtures("push")
def test_a_second_command_in_the_middle_of_a_data_set(node: NodeProcess) -> None:
    ds = ct_series(1, 64, 64, seed="second")[0]
    sock, _ = peer.associate(node.port)
    with sock:
        command = peer.store_command(str(ds.SOPInstanceUID))
        sock.sendall(
            peer.p_data(peer.pdv(1, 0x03, command))
            + peer.p_data(peer.pdv(1, 0x00, peer.encoded(ds)[:4000]))
            + peer.p_data(peer.pdv(1, 0x03, command))
        )
        assert peer.read_answer(sock).abort == (ul.SERVICE_USER, 0)
    assert "a command fragment in the middle of a data set" in node.log_text()


@pytest.mark.usefixtures("push")
def test_a_data_set_fragment_on_another_context(node: NodeProcess) -> None:
    ds = ct_series(1, 32, 32, seed="other-context")[0]
    sock, answer = peer.associate(node.port, contexts=((1, peer.CT), (3, peer.VERIFICATION)))
    with sock:
        assert answer.kind == ul.ASSOCIATE_AC
        sock.sendall(
            peer.p_data(peer.pdv(1, 0x03, peer.store_command(str(ds.SOPInstanceUID))))
            + peer.p_data(peer.pdv(3, 0x02, peer.encoded(ds)))
        )
        assert peer.read_answer(sock).abort == (ul.SERVICE_USER, 0)
    assert "on presentation context 3, its command on 1" in node.log_text()


@pytest.mark.usefixtures("push")
def test_c_store_on_the_verification_context_is_refused(node: NodeProcess) -> None:
    ds = ct_series(1, 32, 32, seed="on-verification")[0]
    sock, _ = peer.associate(node.port, contexts=((1, peer.CT), (3, peer.VERIFICATION)))
    with sock:
        assert peer.store(sock, ds, context_id=3).status == 0x0122
        sock.sendall(peer.p_data(peer.pdv(3, 0x03, peer.echo_command(2))))
        assert peer.read_answer(sock).status == 0x0000  # the association goes on
    assert "wrong_context" in node.log_text()


@pytest.mark.usefixtures("push")
@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        (ul.pdu(0x09, b"\0" * 8), (ul.SERVICE_PROVIDER, ul.UNRECOGNIZED_PDU)),
        (ul.pdu(ul.ASSOCIATE_AC, b"\0" * 68), (ul.SERVICE_PROVIDER, ul.UNEXPECTED_PDU)),
        (struct.pack(">BBI", ul.P_DATA_TF, 0, 0xFFFFFFF0), (ul.SERVICE_PROVIDER, 6)),
        (ul.pdu(ul.P_DATA_TF, b"\0\0\0\x01\x01"), (ul.SERVICE_PROVIDER, 6)),
    ],
    ids=["unknown-type", "unexpected-type", "4-GB-length", "broken-pdv"],
)
def test_broken_pdus_are_aborted_with_the_reason(
    node: NodeProcess, pdu: bytes, expected: tuple[int, int]
) -> None:
    sock, _ = peer.associate(node.port)
    with sock:
        sock.sendall(pdu)
        assert peer.read_answer(sock).abort == expected


@pytest.mark.usefixtures("push")
def test_an_unknown_pdu_instead_of_the_associate_request(node: NodeProcess) -> None:
    sock = peer.connect(node.port)
    with sock:
        sock.sendall(ul.pdu(0x0A, b"\0" * 16))
        assert peer.read_answer(sock).abort == (ul.SERVICE_PROVIDER, ul.UNRECOGNIZED_PDU)


@pytest.mark.usefixtures("push")
def test_a_data_set_nested_past_any_reader_gets_a_status(node: NodeProcess) -> None:
    """Thousands of nested undefined-length sequences: whatever the header readers raise,
    the sender gets a DIMSE status and the association goes on."""
    ds = ct_series(1, 16, 16, seed="nested")[0]
    body = peer.encoded(ds)
    item, end_item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\0\0\0\0"
    sequence = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff"  # (0008,1115), undefined length
    end_sequence = b"\xfe\xff\xdd\xe0\0\0\0\0"
    nested = (sequence + item) * 5000 + (end_item + end_sequence) * 5000
    position = body.index(b"\x08\x00\x60\x00")  # before Modality: inside the header
    hostile = body[:position] + nested + body[position:]
    sock, _ = peer.associate(node.port)
    with sock:
        sock.sendall(
            peer.p_data(peer.pdv(1, 0x03, peer.store_command(str(ds.SOPInstanceUID))))
            + peer.p_data(peer.pdv(1, 0x02, hostile))
        )
        assert peer.read_answer(sock).status in (0x0000, 0xC000)
        sock.sendall(peer.p_data(peer.pdv(1, 0x03, peer.echo_command(2))))
        assert peer.read_answer(sock).kind == ul.P_DATA_TF
