"""Listening TCP sockets of a network namespace, named by their process as `ss -ltnp`
names them, at a cost that allows looking every 0.3 s.

The training test looks in each test host and on the gateway while a job runs. Three
`ip netns exec ... ss -Hltnp` per look cost 7% of a core on a quiet machine, more with
JVMs running (fork and exec; ss reading every process's descriptors each time), and
reading /proc/PID/net/tcp{,6} costs milliseconds a file (the kernel walks every socket
of the machine). Here a look asks the kernel for the listening sockets only
(NETLINK_SOCK_DIAG, what ss itself asks, on a netlink socket made in the namespace);
processes are read once when they appear (a forked child holds its parent's sockets),
and searched again only when a socket appears that none is known to hold.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10
_CLONE_NEWNET = 0x40000000
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
# struct inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid (sport,
# dport big-endian, src[16], dst[16], if, cookie[2]), expires, rqueue, wqueue, uid, inode.
_MESSAGE = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


def ss_address(family: int, raw: bytes, port: int) -> str:
    """A local address as ss prints it: 127.0.0.1:8080, [::ffff:127.0.0.1]:8080, * for the
    IPv6 wildcard, [fd00::1]:8080."""
    if family == socket.AF_INET:
        shown = str(ipaddress.IPv4Address(raw[:4]))
    else:
        address = ipaddress.IPv6Address(raw)
        if address.is_unspecified:
            shown = "*"
        elif address.ipv4_mapped is not None:
            shown = f"[::ffff:{address.ipv4_mapped}]"
        else:
            shown = f"[{address}]"
    return f"{shown}:{port}"


def _netlink_in(netns: str | None) -> socket.socket:
    """A sock_diag netlink socket of the named namespace (/run/netns/NAME; None: this
    process's). Made by a thread of its own that enters the namespace (setns changes
    only the calling thread's) and ends."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)
        finally:
            os.close(target)

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def _listening(sock: socket.socket) -> dict[int, str]:
    """Socket inode -> local address of every listening TCP socket the netlink socket's
    namespace holds."""
    table: dict[int, str] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        request = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 1 << _TCP_LISTEN)
        request += bytes(48)  # inet_diag_sockid: no filter on addresses
        flags = _NLM_F_REQUEST | _NLM_F_DUMP
        sock.send(
            _HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, flags, 1, 0) + request
        )
        done = False
        while not done:
            data = sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    done = True
                    break
                if kind == _NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    raise OSError(-errno, "sock_diag dump failed")
                fields = _MESSAGE.unpack_from(data, offset + _HEADER.size)
                sport, src, inode = fields[4], fields[6], fields[-1]
                table[inode] = ss_address(fields[0], src, int.from_bytes(sport, "big"))
                offset += (length + 3) & ~3
    return table


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(name, state, parent pid, process group) of ``pid``; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name (field 2) is in parentheses and may hold spaces or parentheses.
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], fields[0], int(fields[1]), int(fields[2])


def _netns(where: str) -> int | None:
    try:
        return os.stat(where).st_ino
    except OSError:
        return None


class Processes:
    """This machine's processes, followed from look to look: /proc is listed each
    time, and only a process not seen before is read (parent, group, network
    namespace) and, once it belongs to a view, searched for its sockets."""

    def __init__(self) -> None:
        self.info: dict[int, tuple[int, int, int | None]] = {}  # pid -> ppid, pgid, netns
        self.sockets: dict[int, set[int]] = {}  # pid -> socket inodes, for members of a view

    def refresh(self) -> None:
        now = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
        for gone in self.info.keys() - now:
            del self.info[gone]
            self.sockets.pop(gone, None)
        for pid in now - self.info.keys():
            stat = _stat(pid)
            if stat is not None:
                self.info[pid] = (stat[2], stat[3], _netns(f"/proc/{pid}/ns/net"))

    def in_netns(self, inode: int) -> set[int]:
        return {pid for pid, (_, _, netns) in self.info.items() if netns == inode}

    def tree(self, roots: Iterable[int]) -> set[int]:
        """What trustedml.cluster._process.process_tree gives: ``roots`` (those alive),
        their descendants and whatever is in their process groups."""
        found = {pid for pid in roots if pid in self.info}
        groups = {self.info[pid][1] for pid in found}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, pgid, _) in self.info.items():
                if pid not in found and (ppid in found or pgid in groups):
                    found.add(pid)
                    groups.add(pgid)
                    changed = True
        return found


class Listening:
    """The listening TCP sockets of one network namespace (``netns``: a name under
    /run/netns; None: this process's), each as "ADDRESS:PORT NAME" with `ss -Hltnp`'s
    local address and first name: that of the newest (highest pid) live process holding
    the socket, as it is named now. Close it after use."""

    def __init__(self, processes: Processes, netns: str | None = None) -> None:
        self.processes = processes
        self.netns = netns
        self._inode = _netns(f"/run/netns/{netns}" if netns else "/proc/self/ns/net")
        self._sock = _netlink_in(netns)
        self._members: set[int] = set()
        self._foreign: set[int] = set()  # listening, held by no member when last searched

    def close(self) -> None:
        self._sock.close()

    def look(self, roots: Iterable[int] | None = None) -> set[str]:
        """The listening sockets now (call ``processes.refresh()`` first). Without
        ``roots``, all of them, held by processes of the namespace (NAME "?" for one none
        holds, as ss shows it); with ``roots``, those held by their process trees."""
        table = _listening(self._sock)
        known = self.processes.sockets
        if roots is not None:
            members = self.processes.tree(roots)
        elif self._inode is not None:
            members = self.processes.in_netns(self._inode)
        else:
            members = set()
        # A new member: its sockets (a forked child holds its parent's).
        for pid in members - self._members:
            known[pid] = socket_inodes(pid)
        self._members = members
        held = set().union(*(known.get(pid, set()) for pid in members))
        if set(table) - held - self._foreign:
            # A socket not seen before: a member made it since it was searched.
            for pid in members:
                known[pid] = socket_inodes(pid)
            held = set().union(*(known.get(pid, set()) for pid in members))
        self._foreign = set(table) - held
        shown = set()
        for inode, address in table.items():
            name = self._name(inode, members)
            if name is not None:
                shown.add(f"{address} {name}")
            elif roots is None:
                shown.add(f"{address} ?")
        return shown

    def _name(self, inode: int, members: set[int]) -> str | None:
        known = self.processes.sockets
        for pid in sorted(members, reverse=True):
            if inode in known.get(pid, ()):
                stat = _stat(pid)
                if stat is not None and stat[1] != "Z":  # a zombie holds nothing
                    return stat[0]
        return None
