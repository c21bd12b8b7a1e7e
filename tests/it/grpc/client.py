"""A gRPC client for sidekey's integration tests (tests/it/grpc.rs).

Usage: client.py HOST:PORT

Calls every method of `sidekey.test.Echo` (see server.py) over h2c (HTTP/2
in cleartext with prior knowledge, as gRPC's insecure channels do) at
HOST:PORT, each call carrying the app's own `authorization: Bearer
the-apps-own` metadata, and prints one JSON object: per call either the
decoded answers or the status it ended with ({"code": NAME, "details": …}).

Chat sends a message only after the answer to the previous one arrived, so
it completes only if both directions stream.
"""

import json
import queue
import sys

import grpc

TIMEOUT_S = 10
METADATA = (("authorization", "Bearer the-apps-own"),)


def status(err):
    return {"code": err.code().name, "details": err.details()}


def decode(message):
    return json.loads(message.decode())


def unary(channel):
    call = channel.unary_unary("/sidekey.test.Echo/Unary")
    return decode(call(b"hello", timeout=TIMEOUT_S, metadata=METADATA))


def chat(channel):
    outbox = queue.Queue()

    def messages():
        while True:
            message = outbox.get()
            if message is None:
                return
            yield message

    call = channel.stream_stream("/sidekey.test.Echo/Chat")
    answers = call(messages(), timeout=TIMEOUT_S, metadata=METADATA)
    received = []
    try:
        for i in range(3):
            outbox.put(f"ping-{i}".encode())
            received.append(decode(next(answers)))
    finally:
        outbox.put(None)
    rest = [decode(message) for message in answers]
    return {"answers": received, "after_end": rest}


def collect(channel):
    call = channel.stream_unary("/sidekey.test.Echo/Collect")
    messages = iter([b"a", b"b", b"c"])
    return decode(call(messages, timeout=TIMEOUT_S, metadata=METADATA))


def count(channel):
    call = channel.unary_stream("/sidekey.test.Echo/Count")
    return [decode(message) for message in call(b"3", timeout=TIMEOUT_S, metadata=METADATA)]


def refuse(channel):
    call = channel.unary_unary("/sidekey.test.Echo/Refuse")
    return decode(call(b"please", timeout=TIMEOUT_S, metadata=METADATA))


def main():
    target = sys.argv[1]
    # Straight to sidekey, whatever proxy the environment names.
    options = [("grpc.enable_http_proxy", 0)]
    results = {}
    with grpc.insecure_channel(target, options=options) as channel:
        for name, call in [
            ("unary", unary),
            ("chat", chat),
            ("collect", collect),
            ("count", count),
            ("refuse", refuse),
        ]:
            try:
                results[name] = {"ok": call(channel)}
            except grpc.RpcError as err:
                results[name] = {"status": status(err)}
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
