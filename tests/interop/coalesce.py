# A loopback TCP relay for the interop suite's `coalesced` check. It sits
# between gimlet and a real proxy and holds back the proxy's success reply
# until the end of its head *and* the first tunnel bytes after it have
# arrived, then sends them with one write: gimlet's first read then always
# holds the 200 and the server's first bytes together, which a direct
# connection only does by chance. Replies before it (a 407 and its body, as
# many as authentication takes on one connection) pass as they come.
# Everything else is relayed unchanged, half-closes included.
#
#   coalesce.py LISTEN_PORT PROXY_PORT    (both on 127.0.0.1; runs until killed)
import re
import socket
import sys
import threading

HEAD_END = b"\r\n\r\n"
HOLD_LIMIT = 1 << 16  # give up holding (relay as is) past this many bytes
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def relay(src: socket.socket, dst: socket.socket, hold: bool) -> None:
    """Copy src to dst until EOF, then half-close dst. With `hold`, the first
    write of a 2xx reply waits for its complete head plus at least one byte
    after it; a non-2xx reply with a Content-Length goes on at once with its
    body, and holding resumes for the next reply on the connection."""
    held = b""
    body = 0  # bytes of a passed-on reply's body still to come
    try:
        while data := src.recv(1 << 16):
            if body:
                passed, data = data[:body], data[body:]
                dst.sendall(passed)
                body -= len(passed)
            if not hold:
                dst.sendall(data)
                continue
            held += data
            while hold and (end := held.find(HEAD_END)) >= 0:
                head_len = end + len(HEAD_END)
                status = STATUS.match(held)
                if status and status[1].startswith(b"2"):
                    if len(held) == head_len and len(held) < HOLD_LIMIT:
                        break  # wait for the first tunnel bytes
                    print(f"coalesced {head_len} head bytes with {len(held) - head_len} "
                          f"tunnel bytes", flush=True)
                    hold = False
                    continue
                length = CONTENT_LENGTH.search(held, 0, end)
                if not status or not length:
                    hold = False  # its body runs to the close: relay the rest as is
                    continue
                reply_len = head_len + int(length[1])
                print(f"passed a {status[1].decode()} reply of {reply_len} bytes", flush=True)
                dst.sendall(held[:reply_len])
                body = max(0, reply_len - len(held))
                held = held[reply_len:]
            if not hold or len(held) >= HOLD_LIMIT:
                hold = False
                dst.sendall(held)
                held = b""
        if held:
            dst.sendall(held)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # One side reset: take the other down too, so both threads end.
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client: socket.socket, proxy_port: int) -> None:
    with client, socket.create_connection(("127.0.0.1", proxy_port)) as proxy:
        up = threading.Thread(target=relay, args=(client, proxy, False))
        up.start()
        relay(proxy, client, True)
        up.join()


def main() -> None:
    listen_port, proxy_port = int(sys.argv[1]), int(sys.argv[2])
    with socket.create_server(("127.0.0.1", listen_port)) as server:
        while True:
            client, _ = server.accept()
            threading.Thread(target=serve, args=(client, proxy_port), daemon=True).start()


if __name__ == "__main__":
    main()
