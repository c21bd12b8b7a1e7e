"""A gRPC server over TLS for sidekey's integration tests (tests/it/grpc.rs).

Usage: server.py CERT_PEM KEY_PEM

Serves the service `sidekey.test.Echo` on 127.0.0.1 (a free port, printed as
the first line of stdout) with generic handlers on raw bytes, so no .proto
file or code generation is needed. Every answer is JSON and says which
`authorization` metadata the call carried, so the test can assert what the
upstream saw:

- Unary: echoes the request.
- Chat (bidirectional): answers each message as it arrives.
- Collect (client streaming): counts and joins the messages.
- Count (server streaming): the request is a number N; answers N messages.
- Refuse (unary): fails with PERMISSION_DENIED, "not for you".

Runs until killed.
"""

import json
import sys
from concurrent import futures

import grpc


def authorizations(context):
    return [value for key, value in context.invocation_metadata() if key == "authorization"]


def answer(context, **fields):
    return json.dumps(dict(authorization=authorizations(context), **fields)).encode()


def unary(request, context):
    return answer(context, echo=request.decode())


def chat(requests, context):
    for request in requests:
        yield answer(context, echo=request.decode())


def collect(requests, context):
    messages = [request.decode() for request in requests]
    return answer(context, count=len(messages), joined=",".join(messages))


def count(request, context):
    for i in range(int(request.decode())):
        yield answer(context, n=i)


def refuse(request, context):
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")


def main():
    cert_path, key_path = sys.argv[1:3]
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    handlers = grpc.method_handlers_generic_handler(
        "sidekey.test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
