"""A gRPC client of grpcio (the C core, with its transparent retry of calls
a GOAWAY refused) sending Likes from four threads for a while: prints
{"sent": N, "failed": [...]} as JSON. Used by connections.rs.

usage: goaway_client.py HOST:PORT SECONDS POST_ID
"""
import json
import sys
import threading
import time

import grpc

address, seconds, post = sys.argv[1], float(sys.argv[2]), sys.argv[3]


def field(number, text):
    data = text.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


channel = grpc.insecure_channel(address)
like = channel.unary_unary("/likes.v1.LikeService/Like")
until = time.monotonic() + seconds
sent, failed = [0] * 4, []


def caller(index):
    n = 0
    while time.monotonic() < until:
        request = field(1, post) + field(2, f"py{index}-{n}")
        try:
            like(request, timeout=10)
        except grpc.RpcError as error:
            failed.append(f"{error.code()}: {error.details()}")
        n += 1
    sent[index] = n


threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"sent": sum(sent), "failed": failed}))
