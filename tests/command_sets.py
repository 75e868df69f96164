"""DIMSE request command sets as a requestor encodes them (PS3.7 9.3, E.1: group 0000,
implicit VR little endian), for tests that speak to an SCP byte by byte."""

from __future__ import annotations

import struct

from scp import upper_layer as ul

VERIFICATION = "1.2.840.10008.1.1"


def element(tag: int, value: bytes) -> bytes:
    """A group 0000 element, padded to even length."""
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def command_set(body: bytes) -> bytes:
    """``body``'s elements behind their Command Group Length (0000,0000)."""
    return element(0x0000, struct.pack("<I", len(body))) + body


def c_echo_rq(message_id: int) -> bytes:
    """A C-ECHO-RQ (PS3.7 9.3.5.1)."""
    body = element(0x0002, VERIFICATION.encode())
    body += element(0x0100, struct.pack("<H", ul.C_ECHO_RQ))
    body += element(0x0110, struct.pack("<H", message_id))
    body += element(0x0800, struct.pack("<H", ul.NO_DATA_SET))
    return command_set(body)


def c_store_rq(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int = 0,
    data_set_type: int = 0x0000,
) -> bytes:
    """A C-STORE-RQ (PS3.7 9.3.1.1); a data set type other than 0x0101 announces one."""
    body = element(0x0002, sop_class.encode())
    body += element(0x0100, struct.pack("<H", ul.C_STORE_RQ))
    body += element(0x0110, struct.pack("<H", message_id))
    body += element(0x0700, struct.pack("<H", priority))
    body += element(0x0800, struct.pack("<H", data_set_type))
    body += element(0x1000, sop_instance.encode())
    return command_set(body)
