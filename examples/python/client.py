"""An example client of likes.v1.LikeService in Python: it likes posts as a
user, each call with a deadline and the bearer token, retries a call
answered UNAVAILABLE after the delay the server's RetryInfo asks for (Like
is idempotent, so a retry is always safe), then reads the feed page of
those posts with one GetLikeSummaries and prints a line a post:
"<post> <count> liked|not-liked".

The stubs are generated from the contract with grpcio-tools:

    pip install grpcio grpcio-tools grpcio-status
    python -m grpc_tools.protoc -I proto/proto --python_out=gen \
        --grpc_python_out=gen likes/v1/likes.proto
    PYTHONPATH=gen LIKES_TOKEN=... python examples/python/client.py \
        --addr 127.0.0.1:50051 --user u1 p1 p2
"""
import argparse
import os
import sys
import time

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from likes.v1 import likes_pb2, likes_pb2_grpc


def retry_delay(error):
    """The delay the server's RetryInfo asks for, else 100 ms."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return 0.1


def with_retries(call, attempts):
    """call() until it is not UNAVAILABLE, at most `attempts` times; the
    answer and how many retries it took."""
    retries = 0
    while True:
        try:
            return call(), retries
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or retries + 1 >= attempts:
                raise
            time.sleep(retry_delay(error))
            retries += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--ca-file", help="PEM CAs of an api that serves TLS")
    parser.add_argument("--user", required=True)
    parser.add_argument("--deadline-ms", type=int, default=2000)
    parser.add_argument("--attempts", type=int, default=10)
    parser.add_argument("posts", nargs="+")
    args = parser.parse_args()

    if args.ca_file:
        with open(args.ca_file, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(ca.read())
        channel = grpc.secure_channel(args.addr, credentials)
    else:
        channel = grpc.insecure_channel(args.addr)
    stub = likes_pb2_grpc.LikeServiceStub(channel)
    token = os.environ.get("LIKES_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    deadline = args.deadline_ms / 1000

    retries = 0
    for post in args.posts:
        request = likes_pb2.LikeRequest(post_id=post, user_id=args.user)
        _, retried = with_retries(
            lambda: stub.Like(request, timeout=deadline, metadata=metadata), args.attempts
        )
        retries += retried
    print(f"liked {len(args.posts)} posts, {retries} retries", file=sys.stderr)

    # One call for the whole feed page; reads trail the writes by a few
    # dozen milliseconds.
    request = likes_pb2.GetLikeSummariesRequest(viewer_id=args.user, post_ids=args.posts)
    page, _ = with_retries(
        lambda: stub.GetLikeSummaries(request, timeout=deadline, metadata=metadata),
        args.attempts,
    )
    for post in args.posts:
        summary = page.summaries[post]
        print(f"{post} {summary.count} {'liked' if summary.viewer_liked else 'not-liked'}")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        sys.exit(f"{error.code()}: {error.details()}")
