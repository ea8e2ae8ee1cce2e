"""A fake of Modal's API on 127.0.0.1, served to the real `modal` client.

Two grpclib services on one port, as Modal's own client tests serve them: the control plane
(`modal_proto.api_grpc.ModalClientBase`) and the task command router
(`modal_proto.task_command_router_grpc.TaskCommandRouterBase`) that a V2 sandbox's commands,
files and snapshots go through. The client finds it through Modal's own settings:
`MODAL_SERVER_URL=http://127.0.0.1:PORT` and dummy `MODAL_TOKEN_ID`/`MODAL_TOKEN_SECRET`;
for a localhost server the client accepts a plain-http router URL.

Served: ClientHello, AuthTokenGet, EnvironmentGetOrCreate, AppGetOrCreate, AppClientDisconnect; ImageGetOrCreate,
ImageJoinStreaming, ImageFromId; MountBatchedCheckExistence, MountPutFile (inline data),
MountGetOrCreate; SandboxCreateV2, SandboxGetTaskIdV2, SandboxGetCommandRouterAccess,
SandboxWaitV2, SandboxTerminateV2; router TaskExecStart, TaskExecStdioRead, TaskExecStdinWrite,
TaskExecStdinWriteStream, TaskExecWait, TaskExecPoll, TaskSnapshotFilesystem. Every other RPC
answers UNIMPLEMENTED and is listed in `world.unserved` (files over 4 MiB, which go through
BlobCreate and a presigned upload, are among them). `world.refuse[name] = (status, message)`
makes an RPC fail as Modal would. What the sandboxes are: see `modal_world.py`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.api_grpc import ModalClientBase
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

from tests.fakes.modal_world import CHUNK, FakeExec, FakeModalError, FakeModalWorld, new_id

SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
BUILDER_VERSION = "2025.06"
Handler = Callable[[Any], Awaitable[Any]]


def _jwt() -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(time.time()) + 3600})}.fake"


async def _unary(world: FakeModalWorld, name: str, stream: Stream[Any, Any], fn: Handler) -> None:
    request = await stream.recv_message()
    world.calls.append(name)
    if name in world.refuse:
        status, message = world.refuse[name]
        raise GRPCError(Status(status), message)
    try:
        response = await fn(request)
    except FakeModalError as exc:
        raise GRPCError(Status.NOT_FOUND, str(exc)) from None
    await stream.send_message(response)


def _unserved(name: str) -> Callable[..., Awaitable[None]]:
    async def handler(self: Any, stream: Stream[Any, Any]) -> None:
        self.world.unserved.append(name)
        raise GRPCError(Status.UNIMPLEMENTED, f"the fake Modal does not serve {name}")

    return handler


def _fill_unserved(cls: type) -> type:
    for name in list(getattr(cls, "__abstractmethods__", ())):
        setattr(cls, name, _unserved(name))
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]
    return cls


class ControlPlane(ModalClientBase):
    def __init__(self, world: FakeModalWorld, router_url: Callable[[], str]) -> None:
        self.world = world
        self.router_url = router_url

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        await _unary(self.world, "ClientHello", stream, self._hello)

    async def _hello(self, _req: Any) -> api_pb2.ClientHelloResponse:
        return api_pb2.ClientHelloResponse()

    async def AuthTokenGet(self, stream: Stream[Any, Any]) -> None:
        async def token(_req: Any) -> api_pb2.AuthTokenGetResponse:
            return api_pb2.AuthTokenGetResponse(token=_jwt())

        await _unary(self.world, "AuthTokenGet", stream, token)

    async def EnvironmentGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        async def environment(req: Any) -> api_pb2.EnvironmentGetOrCreateResponse:
            settings = api_pb2.EnvironmentSettings(image_builder_version=BUILDER_VERSION)
            metadata = api_pb2.EnvironmentMetadata(name=req.deployment_name, settings=settings)
            return api_pb2.EnvironmentGetOrCreateResponse(
                environment_id="en-fake", metadata=metadata
            )

        await _unary(self.world, "EnvironmentGetOrCreate", stream, environment)

    async def AppGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        async def app(req: api_pb2.AppGetOrCreateRequest) -> api_pb2.AppGetOrCreateResponse:
            return api_pb2.AppGetOrCreateResponse(app_id=f"ap-{req.app_name}")

        await _unary(self.world, "AppGetOrCreate", stream, app)

    async def AppClientDisconnect(self, stream: Stream[Any, Any]) -> None:
        from google.protobuf import empty_pb2

        async def bye(_req: Any) -> empty_pb2.Empty:
            return empty_pb2.Empty()

        await _unary(self.world, "AppClientDisconnect", stream, bye)

    # ------------------------------------------------------------ images and mounts

    async def ImageGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        async def get_or_create(req: api_pb2.ImageGetOrCreateRequest) -> Any:
            # No result: the client joins the build's log stream for it, as with Modal.
            return api_pb2.ImageGetOrCreateResponse(image_id=self.world.build(req.image))

        await _unary(self.world, "ImageGetOrCreate", stream, get_or_create)

    async def ImageJoinStreaming(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        self.world.calls.append("ImageJoinStreaming")
        ok, lines = self.world.build_logs.get(req.image_id, (False, ["no such build"]))
        logs = [api_pb2.TaskLogs(data=line + "\n", file_descriptor=1) for line in lines]
        await stream.send_message(api_pb2.ImageJoinStreamingResponse(task_logs=logs, entry_id="1"))
        result = api_pb2.GenericResult(
            status=SUCCESS if ok else FAILURE, exception="" if ok else lines[-1]
        )
        await stream.send_message(
            api_pb2.ImageJoinStreamingResponse(result=result, entry_id="2", eof=True)
        )

    async def ImageFromId(self, stream: Stream[Any, Any]) -> None:
        async def from_id(req: api_pb2.ImageFromIdRequest) -> api_pb2.ImageFromIdResponse:
            if req.image_id not in self.world.images:
                raise FakeModalError(f"Could not find image with ID {req.image_id}")
            return api_pb2.ImageFromIdResponse(image_id=req.image_id)

        await _unary(self.world, "ImageFromId", stream, from_id)

    async def MountBatchedCheckExistence(self, stream: Stream[Any, Any]) -> None:
        async def check(req: Any) -> api_pb2.MountBatchedCheckExistenceResponse:
            missing = [h for h in req.sha256_hex_hashes if h not in self.world.blobs]
            return api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)

        await _unary(self.world, "MountBatchedCheckExistence", stream, check)

    async def MountPutFile(self, stream: Stream[Any, Any]) -> None:
        async def put(req: api_pb2.MountPutFileRequest) -> api_pb2.MountPutFileResponse:
            if req.data_blob_id:
                raise GRPCError(Status.UNIMPLEMENTED, "the fake Modal takes files inline only")
            if req.HasField("data"):
                self.world.blobs[req.sha256_hex] = req.data
            return api_pb2.MountPutFileResponse(exists=req.sha256_hex in self.world.blobs)

        await _unary(self.world, "MountPutFile", stream, put)

    async def MountGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        async def mount(req: api_pb2.MountGetOrCreateRequest) -> Any:
            mount_id = new_id("mo")
            self.world.mounts[mount_id] = list(req.files)
            return api_pb2.MountGetOrCreateResponse(mount_id=mount_id)

        await _unary(self.world, "MountGetOrCreate", stream, mount)

    # ------------------------------------------------------------ sandboxes

    def _access(self) -> api_pb2.CommandRouterAccess:
        return api_pb2.CommandRouterAccess(url=self.router_url(), jwt=_jwt())

    async def SandboxCreateV2(self, stream: Stream[Any, Any]) -> None:
        async def create(req: api_pb2.SandboxCreateV2Request) -> Any:
            env: dict[str, str] = {}
            for source in req.secret_sources:
                env.update(source.env.contents)
            sandbox = await self.world.create_sandbox(req.definition, env)
            return api_pb2.SandboxCreateV2Response(
                sandbox_id=sandbox.id,
                task_id=sandbox.task_id,
                command_router_access=self._access(),
            )

        await _unary(self.world, "SandboxCreateV2", stream, create)

    async def SandboxGetTaskIdV2(self, stream: Stream[Any, Any]) -> None:
        async def task(req: Any) -> api_pb2.SandboxGetTaskIdResponse:
            sandbox = self.world.sandboxes.get(req.sandbox_id)
            if sandbox is None:
                raise FakeModalError(f"no sandbox {req.sandbox_id}")
            if sandbox.terminated:
                done = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
                return api_pb2.SandboxGetTaskIdResponse(task_result=done)
            return api_pb2.SandboxGetTaskIdResponse(task_id=sandbox.task_id)

        await _unary(self.world, "SandboxGetTaskIdV2", stream, task)

    async def SandboxGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        async def access(_req: Any) -> api_pb2.SandboxGetCommandRouterAccessResponse:
            got = self._access()
            return api_pb2.SandboxGetCommandRouterAccessResponse(url=got.url, jwt=got.jwt)

        await _unary(self.world, "SandboxGetCommandRouterAccess", stream, access)

    async def SandboxWaitV2(self, stream: Stream[Any, Any]) -> None:
        async def wait(req: Any) -> api_pb2.SandboxWaitResponse:
            sandbox = self.world.sandboxes.get(req.sandbox_id)
            if sandbox is None:
                raise FakeModalError(f"no sandbox {req.sandbox_id}")
            if not sandbox.terminated:
                return api_pb2.SandboxWaitResponse()
            done = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
            return api_pb2.SandboxWaitResponse(result=done)

        await _unary(self.world, "SandboxWaitV2", stream, wait)

    async def SandboxTerminateV2(self, stream: Stream[Any, Any]) -> None:
        async def terminate(req: Any) -> Any:
            sandbox = self.world.sandboxes.get(req.sandbox_id)
            if sandbox is not None:
                await self.world.terminate(sandbox)
            return api_pb2.SandboxTerminateResponse()

        await _unary(self.world, "SandboxTerminateV2", stream, terminate)


class Router(TaskCommandRouterBase):
    """The task command router: commands, their output and stdin, and filesystem snapshots."""

    def __init__(self, world: FakeModalWorld) -> None:
        self.world = world

    def _exec(self, task_id: str, exec_id: str) -> tuple[Any, FakeExec]:
        sandbox = self.world.by_task(task_id)
        run = sandbox.execs.get(exec_id)
        if run is None:
            raise FakeModalError(f"no exec {exec_id}")
        return sandbox, run

    async def TaskExecStart(self, stream: Stream[Any, Any]) -> None:
        async def start(req: sr_pb2.TaskExecStartRequest) -> sr_pb2.TaskExecStartResponse:
            sandbox = self.world.by_task(req.task_id)
            env: dict[str, str] = dict(sandbox.definition.environment_variables.contents)
            for source in req.secret_sources:
                env.update(source.env.contents)
            for entry in req.env:
                env[entry.key] = entry.value
            run = FakeExec(list(req.command_args), req.workdir, env, req.timeout_secs)
            self.world.start_exec(sandbox, req.exec_id, run)
            return sr_pb2.TaskExecStartResponse()

        await _unary(self.world, "TaskExecStart", stream, start)

    async def TaskExecStdinWrite(self, stream: Stream[Any, Any]) -> None:
        async def write(req: sr_pb2.TaskExecStdinWriteRequest) -> Any:
            sandbox, run = self._exec(req.task_id, req.exec_id)
            del run.stdin[req.offset :]
            run.stdin += req.data
            if req.eof:
                run.stdin_closed.set()
                self.world.begin(sandbox, run)
            return sr_pb2.TaskExecStdinWriteResponse()

        await _unary(self.world, "TaskExecStdinWrite", stream, write)

    async def TaskExecStdinWriteStream(self, stream: Stream[Any, Any]) -> None:
        self.world.calls.append("TaskExecStdinWriteStream")
        run: FakeExec | None = None
        sandbox = None
        try:
            async for message in stream:
                if message.HasField("start"):
                    sandbox, run = self._exec(message.start.task_id, message.start.exec_id)
                    del run.stdin[message.start.offset :]
                elif run is not None and message.HasField("end"):
                    break
                elif run is not None:
                    run.stdin += message.data
        except FakeModalError as exc:
            raise GRPCError(Status.NOT_FOUND, str(exc)) from None
        if run is not None and sandbox is not None:
            run.stdin_closed.set()
            self.world.begin(sandbox, run)
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdioRead(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        self.world.calls.append("TaskExecStdioRead")
        try:
            sandbox, run = self._exec(req.task_id, req.exec_id)
        except FakeModalError as exc:
            raise GRPCError(Status.NOT_FOUND, str(exc)) from None
        self.world.begin(sandbox, run)
        await run.done.wait()
        stdout = req.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT
        out = run.stdout if stdout else run.stderr
        for i in range(req.offset, len(out), CHUNK):
            await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=out[i : i + CHUNK]))

    async def TaskExecWait(self, stream: Stream[Any, Any]) -> None:
        async def wait(req: sr_pb2.TaskExecWaitRequest) -> sr_pb2.TaskExecWaitResponse:
            sandbox, run = self._exec(req.task_id, req.exec_id)
            self.world.begin(sandbox, run)
            await run.done.wait()
            return sr_pb2.TaskExecWaitResponse(code=run.code)

        await _unary(self.world, "TaskExecWait", stream, wait)

    async def TaskExecPoll(self, stream: Stream[Any, Any]) -> None:
        async def poll(req: sr_pb2.TaskExecPollRequest) -> sr_pb2.TaskExecPollResponse:
            _sandbox, run = self._exec(req.task_id, req.exec_id)
            if not run.done.is_set():
                return sr_pb2.TaskExecPollResponse()
            return sr_pb2.TaskExecPollResponse(code=run.code)

        await _unary(self.world, "TaskExecPoll", stream, poll)

    async def TaskSnapshotFilesystem(self, stream: Stream[Any, Any]) -> None:
        async def snapshot(req: Any) -> sr_pb2.TaskSnapshotFilesystemResponse:
            sandbox = self.world.by_task(req.task_id)
            return sr_pb2.TaskSnapshotFilesystemResponse(
                image_id=await self.world.snapshot(sandbox, req.ttl_seconds)
            )

        await _unary(self.world, "TaskSnapshotFilesystem", stream, snapshot)


_fill_unserved(ControlPlane)
_fill_unserved(Router)


class _Server(Server):
    """grpclib's server, closing its clients' connections when it closes (grpclib's own
    ends their requests but leaves the sockets to the garbage collector)."""

    _transports: set[asyncio.BaseTransport]

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        made = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            self._transports = getattr(self, "_transports", set()) | {transport}
            made(transport)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    def close(self) -> None:
        super().close()
        for transport in getattr(self, "_transports", set()):
            transport.close()


class FakeModal:
    """The fake in a background thread with its own event loop; `world` is its state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.world: FakeModalWorld
        self._server: Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro: Awaitable[Any]) -> Any:
        """Run `coro` on the fake's loop (the world is only touched from there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self.world = FakeModalWorld(self.root)
        server = _Server([ControlPlane(self.world, lambda: self.url), Router(self.world)])
        await server.start("127.0.0.1", 0)
        assert server._server is not None and server._server.sockets
        self.port = server._server.sockets[0].getsockname()[1]
        self._server = server

    async def _stop(self) -> None:
        await self.world.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def start(self) -> FakeModal:
        self._thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@contextmanager
def fake_modal(root: Path) -> Iterator[FakeModal]:
    fake = FakeModal(root).start()
    try:
        yield fake
    finally:
        fake.stop()
