# A loopback TCP relay for the interop suite's `coalesced` check. It sits
# between gimlet and a real proxy and holds back the proxy's reply until the
# end of its head *and* the first tunnel bytes after it have arrived, then
# sends them with one write: gimlet's first read then always holds the 200 and
# the server's first bytes together, which a direct connection only does by
# chance. Everything else is relayed unchanged, half-closes included.
#
#   coalesce.py LISTEN_PORT PROXY_PORT    (both on 127.0.0.1; runs until killed)
import socket
import sys
import threading

HEAD_END = b"\r\n\r\n"
HOLD_LIMIT = 1 << 16  # give up holding (relay as is) past this many bytes


def relay(src: socket.socket, dst: socket.socket, hold: bool) -> None:
    """Copy src to dst until EOF, then half-close dst. With `hold`, the first
    write waits for a complete reply head plus at least one byte after it."""
    held = b""
    try:
        while data := src.recv(1 << 16):
            if hold:
                held += data
                end = held.find(HEAD_END)
                if (end < 0 or len(held) == end + len(HEAD_END)) and len(held) < HOLD_LIMIT:
                    continue
                if end >= 0:
                    print(f"coalesced {end + len(HEAD_END)} head bytes with "
                          f"{len(held) - end - len(HEAD_END)} tunnel bytes", flush=True)
                data, held, hold = held, b"", False
            dst.sendall(data)
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
