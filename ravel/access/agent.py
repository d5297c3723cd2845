"""A QEMU guest agent client over the VM's agent channel (a virtio-serial port served on a unix
socket of its host): it works with the guest's network down and needs no SSH in the image.

The protocol is QEMU's (docs/interop/qemu-ga-ref): JSON commands, one reply each; a session
starts with `guest-sync-delimited` after a 0xFF byte, which resets the agent's parser and lets
the reply be found after any stale bytes a previous client left in the port."""

from __future__ import annotations

import base64
import json
import random
import select
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import RavelError
from .channel import Link

SYNC_S = 5.0  # an agent that does not answer the first command within this is not there
POLL_S = 0.1  # how often a running command's status is asked
MAX_LINE = 64 << 20  # a reply larger than this is refused (a command's captured output is base64)
FILE_CHUNK = 4 << 20  # bytes per guest-file-read/write (the agent's own cap is 48 MiB)


class AgentError(RavelError):
    """The guest agent did not answer, or refused a command."""

    exit_code = 6


@dataclass(frozen=True)
class Finished:
    status: int  # exit status, or 128 + signal like a shell
    stdout: bytes
    stderr: bytes
    truncated: bool  # the agent kept only the first part of the output


class GuestAgent:
    def __init__(self, link: Link, vm: str) -> None:
        self.link = link
        self.vm = vm
        self.buf = bytearray()

    # -- the wire ------------------------------------------------------------------------------

    def _send(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.link.sendall(json.dumps(msg).encode() + b"\n")

    def _fill(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.link], [], [], left)[0]:
            raise AgentError(f"VM {self.vm}: the guest agent did not answer {what} in time",
                             hint="is qemu-guest-agent installed and running in the guest? `ravel ssh` "
                                  "reaches it over the network instead")
        chunk = self.link.recv(1 << 20)
        if not chunk:
            raise AgentError(f"VM {self.vm}: the guest agent's channel closed during {what}")
        self.buf += chunk
        if len(self.buf) > MAX_LINE:
            raise AgentError(f"VM {self.vm}: the guest agent's reply to {what} is larger than {MAX_LINE >> 20} MiB")

    def _reply(self, deadline: float, what: str) -> Any:
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                self._fill(deadline, what)
                continue
            line, self.buf = bytes(self.buf[:nl]).strip(), self.buf[nl + 1:]
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # stale bytes of an earlier session
            if "error" in doc:
                e = doc["error"]
                raise AgentError(f"VM {self.vm}: the guest agent refused {what}: {e.get('desc') or e}")
            if "return" in doc:
                return doc["return"]

    def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        self._send(command, arguments)
        return self._reply(time.monotonic() + timeout, command)

    def sync(self, timeout: float = SYNC_S) -> None:
        token = random.randrange(1, 1 << 31)
        self.link.sendall(b"\xff")
        self._send("guest-sync-delimited", {"id": token})
        deadline = time.monotonic() + timeout
        while True:  # the reply follows a 0xFF; anything before it is stale
            i = self.buf.find(b"\xff")
            if i >= 0:
                del self.buf[:i + 1]
                break
            self.buf.clear()
            self._fill(deadline, "guest-sync")
        if self._reply(deadline, "guest-sync") != token:
            raise AgentError(f"VM {self.vm}: the guest agent answered another session's guest-sync")

    # -- commands --------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], stdin: bytes | None, timeout: float) -> Finished:
        """Run argv in the guest (PATH searched) and wait for it, bounded by `timeout`: past it
        the process is killed and AgentError says so."""
        args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if stdin:
            args["input-data"] = base64.b64encode(stdin).decode()
        pid = self.call("guest-exec", args)["pid"]
        deadline = time.monotonic() + timeout
        while True:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                break
            if time.monotonic() > deadline:
                try:
                    self.call("guest-exec", {"path": "kill", "arg": ["-KILL", str(pid)]})
                except AgentError:
                    pass  # said below either way
                raise AgentError(f"VM {self.vm}: `{' '.join(argv)}` did not finish within {timeout:.0f} s "
                                     "(killed in the guest)")
            time.sleep(POLL_S)
        status = st["exitcode"] if "exitcode" in st else 128 + int(st.get("signal") or 0)
        return Finished(int(status), base64.b64decode(st.get("out-data") or ""), base64.b64decode(st.get("err-data") or ""),
                        bool(st.get("out-truncated") or st.get("err-truncated")))

    def open(self, path: str, mode: str) -> int:
        return int(self.call("guest-file-open", {"path": path, "mode": mode}))

    def read(self, handle: int, count: int = FILE_CHUNK) -> tuple[bytes, bool]:
        r = self.call("guest-file-read", {"handle": handle, "count": count})
        return base64.b64decode(r.get("buf-b64") or ""), bool(r.get("eof"))

    def write(self, handle: int, data: bytes) -> None:
        r = self.call("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode()})
        if int(r.get("count", -1)) != len(data):
            raise AgentError(f"VM {self.vm}: the guest agent wrote {r.get('count')} of {len(data)} bytes")

    def close_file(self, handle: int) -> None:
        self.call("guest-file-close", {"handle": handle})
