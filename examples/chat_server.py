"""A chat server with rooms (asyncio): each room is a group of sessions, commands are
requests, chat lines are one-way messages broadcast with ``transport.send_to_group``.

The protocol (UTF-8 text):

- requests, answered ``ok ...`` or ``error: ...``: ``nick NAME``, ``join ROOM``, ``leave ROOM``,
  ``who ROOM`` (the answer lists the room's members on the node that answers).  Joining or
  leaving also tells the room (``* alice joined #lobby``);
- one-way ``say ROOM TEXT``: the server sends ``[#ROOM] NICK: TEXT`` to every member of the
  room (the sender too: that is its confirmation), or ``! ...`` back to a sender who is not in it.

A room is the group ``room:NAME``: ``session.join(group)`` / ``session.leave(group)`` are
bookkeeping, ``send_to_group`` returns one result per local member, and a session that closes
leaves its groups by itself.

The demo: three scripted clients (alice, bob, carol) join rooms, chat and leave; every line
each one receives is checked against who should get it and printed.  Run it:

    python examples/chat_server.py                     # one server, ~1 s

With ``--redis URL`` the demo runs two server nodes linked by a Redis backplane (alice on the
first, bob and carol on the second): a room's lines reach its members on every node.  Redis
pub/sub subscriptions are made in the background after a join, so the demo pauses briefly
after each one there.  As a real server (one node per process or machine, behind a load
balancer; needs ``pip install 'msgtrans[redis]'`` for ``--redis``):

    python examples/chat_server.py --serve --port 9000 [--redis redis://127.0.0.1:6379/0]
    python -m msgtrans send --request tcp://127.0.0.1:9000 'who lobby'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid

import msgtrans.io_asyncio as mt


class Chat:
    """The server's handler: nick names by session, rooms as groups."""

    def __init__(self, transport: mt.Transport) -> None:
        self.transport = transport
        self.nicks: dict[int, str] = {}

    def nick(self, session: mt.Session) -> str:
        return self.nicks.get(session.id, f"guest{session.id}")

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        command, _, arg = bytes(message.payload).decode().partition(" ")
        if command == "nick" and arg:
            self.nicks[session.id] = arg
            return f"ok you are {arg}".encode()
        if command in ("join", "leave", "who") and arg:
            group = f"room:{arg}"
            if command == "join":
                session.join(group)
                await self.tell(group, f"* {self.nick(session)} joined #{arg}")
            elif command == "leave":
                if not session.leave(group):
                    return f"error: not in #{arg}".encode()
                await self.tell(group, f"* {self.nick(session)} left #{arg}")
            members = sorted(self.nick(s) for s in self.transport.group_members(group))
            return f"ok #{arg}: {', '.join(members) or 'nobody'} here".encode()
        return f"error: unknown command {command!r}".encode()

    async def on_message(self, session: mt.Session, message: mt.Message) -> None:
        command, _, rest = bytes(message.payload).decode().partition(" ")
        room, _, text = rest.partition(" ")
        if command != "say" or not room:
            await session.send(b"! say ROOM TEXT")
        elif f"room:{room}" not in session.groups:
            await session.send(f"! join #{room} first".encode())
        else:
            await self.tell(f"room:{room}", f"[#{room}] {self.nick(session)}: {text}")

    async def on_disconnected(self, session: mt.Session, reason: object) -> None:
        self.nicks.pop(session.id, None)

    async def tell(self, group: str, text: str) -> None:
        """Send *text* to every member of *group* (on every node, with a backplane)."""
        await self.transport.send_to_group(group, text.encode())


def build_server(redis: str | None, prefix: str) -> mt.Transport:
    builder = mt.Transport.builder()
    if redis is not None:
        builder = builder.backplane(redis, prefix=prefix)
    return builder.build()


Serving = asyncio.Task[mt.ShutdownReport | None]  # what serve() returns, as a task


async def start_node(redis: str | None, prefix: str, port: int = 0,
                     host: str = "127.0.0.1") -> tuple[mt.Transport, Serving, str]:
    """A chat server node; returns it, its serve task and its URL."""
    server = build_server(redis, prefix)
    stream = server.accept([f"tcp://{host}:{port}"])
    await stream.start()  # binds now, so the port is known
    serving = asyncio.create_task(server.serve(stream, Chat(server)))
    bound_host, bound_port = stream.addresses[0]
    return server, serving, f"tcp://{bound_host}:{bound_port}"


class Client:
    """A scripted chat client."""

    def __init__(self, name: str, session: mt.Session) -> None:
        self.name, self.session = name, session

    async def command(self, text: str) -> str:
        return bytes((await self.session.request(text.encode())).payload).decode()

    async def say(self, room: str, text: str) -> None:
        await self.session.send(f"say {room} {text}".encode())

    async def next_line(self) -> str:
        return bytes((await asyncio.wait_for(self.session.receive(), 5)).payload).decode()


class Script:
    """Runs the conversation and checks that every line reaches exactly who it should."""

    def __init__(self, clients: list[Client], settle: float) -> None:
        self.by_name = {c.name: c for c in clients}
        self.rooms: dict[str, list[str]] = {}
        self.settle = settle

    async def expect(self, line: str, names: list[str]) -> None:
        """Every client in *names* receives *line* next; print it with who got it."""
        got = await asyncio.gather(*(self.by_name[n].next_line() for n in names))
        assert got == [line] * len(names), (line, got)
        print(f"{line:44} -> {', '.join(names)}")

    async def join(self, name: str, room: str) -> None:
        members = self.rooms.setdefault(room, [])
        members.append(name)
        reply = await self.by_name[name].command(f"join {room}")
        await self.expect(f"* {name} joined #{room}", members)
        print(f"  ({name}: {reply})")
        if self.settle:
            await asyncio.sleep(self.settle)  # Redis subscribes in the background

    async def leave(self, name: str, room: str) -> None:
        self.rooms[room].remove(name)
        reply = await self.by_name[name].command(f"leave {room}")
        await self.expect(f"* {name} left #{room}", self.rooms[room])
        print(f"  ({name}: {reply})")

    async def say(self, name: str, room: str, text: str) -> None:
        await self.by_name[name].say(room, text)
        if name in self.rooms.get(room, []):
            await self.expect(f"[#{room}] {name}: {text}", self.rooms[room])
        else:
            await self.expect(f"! join #{room} first", [name])

    async def check_nothing_else(self) -> None:
        """A round trip per client (one-way lines and responses keep their order on a
        session): nothing may be left unread."""
        for client in self.by_name.values():
            await client.command("who lobby")
            assert client.session.receive_nowait() is None, client.name


async def demo(redis: str | None) -> None:
    prefix = f"chat-demo-{uuid.uuid4().hex[:8]}"  # a cluster of our own on a shared Redis
    nodes = [await start_node(redis, prefix) for _ in range(2 if redis else 1)]
    async with mt.Transport.builder().request_timeout(5).build() as transport:
        clients = []
        for i, name in enumerate(("alice", "bob", "carol")):
            url = nodes[min(i, len(nodes) - 1)][2]
            client = Client(name, await transport.connect(url))
            print(f"{name} connected to node {min(i, len(nodes) - 1) + 1}: "
                  f"{await client.command('nick ' + name)}")
            clients.append(client)
        script = Script(clients, settle=0.3 if redis else 0.0)

        await script.join("alice", "lobby")
        await script.join("bob", "lobby")
        await script.join("carol", "lobby")
        await script.join("carol", "rust")
        await script.say("alice", "lobby", "hi all")
        await script.say("bob", "lobby", "hello alice")
        await script.say("carol", "rust", "anyone here?")
        await script.join("bob", "rust")
        await script.say("carol", "rust", "bob! 1.80 is out")
        await script.leave("bob", "lobby")
        await script.say("alice", "lobby", "where did bob go?")
        await script.say("bob", "lobby", "still here?")
        await script.check_nothing_else()
        print(f"who is in #lobby: {await clients[0].command('who lobby')}")
        print(f"who is in #rust: {await clients[1].command('who rust')}")

        for client in clients:
            await client.session.close()
    for server, serving, _ in nodes:
        await server.graceful_shutdown(5)
        await asyncio.wait_for(serving, 5)
    print(f"chat over: {len(nodes)} node(s), every line reached exactly its room")


async def serve_forever(args: argparse.Namespace) -> None:
    server, serving, url = await start_node(args.redis, args.prefix, args.port, args.host)
    print(f"chat server on {url}" + (f", backplane {args.redis}" if args.redis else ""),
          flush=True)
    try:
        await serving
    finally:
        await server.graceful_shutdown(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", help="redis://HOST:PORT/DB: run as a cluster node")
    parser.add_argument("--serve", action="store_true", help="run the server only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--prefix", default="chat", help="--serve: the cluster's channel prefix")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --serve
        asyncio.run(serve_forever(args) if args.serve else demo(args.redis))


if __name__ == "__main__":
    main()
