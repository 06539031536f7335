"""A stand-in for one replica behind Envoy, for the clients' routing and retry tests."""

from __future__ import annotations

import grpc

# deploy/envoy/envoy.yaml's local reply when the replica a call is pinned to cannot be used.
ENVOY_LOST_REPLICA = (
    "the replica holding this video session is unavailable (it stopped, restarted, is "
    "draining or is wedged); a session cannot move to another replica: start a new session"
)


class FakeReplica:
    """A VideoService standing in for one replica behind Envoy: StartSession and UploadVideo
    answer with the routing header Envoy's stateful session filter adds (a different value for
    each session), and every call's metadata and deadline are recorded.

    Session "busy": the first call of each method about it finds the queue full (with
    RetryInfo). Session "lost" (StartSession on "lost.mp4"): its replica is gone, as Envoy tells
    it: GetSession gets Envoy's UNAVAILABLE local reply, Propagate a stream reset (INTERNAL
    "RST_STREAM"), neither with a rich status."""

    def __init__(self) -> None:
        from concurrent import futures

        from sam3_grpc.v1 import video_service_pb2 as pb
        from sam3_grpc.v1 import video_service_pb2_grpc as pb_grpc

        self.calls: list[dict] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
        calls = self.calls

        def seen(method, request, context):
            metadata = dict(context.invocation_metadata())
            remaining = context.time_remaining()  # about 2**63 ns when the call has no deadline
            calls.append(
                {
                    "method": method,
                    "session_id": getattr(request, "session_id", None),
                    "route": metadata.get("x-sam3-replica"),
                    "time_remaining": None if remaining > 1e9 else remaining,
                }
            )

        def session(session_id):
            return pb.Session(session_id=session_id, video=pb.VideoInfo(frame_count=2))

        def queue_full(context):
            """What the server sends when its device queue is full."""
            from google.protobuf import any_pb2, duration_pb2
            from google.rpc import code_pb2, error_details_pb2, status_pb2
            from grpc_status import rpc_status

            details = []
            for detail in (
                error_details_pb2.ErrorInfo(
                    reason="QUEUE_FULL", domain="sam3_grpc", metadata={"capacity": "64"}
                ),
                error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=600_000_000)),
            ):
                packed = any_pb2.Any()
                packed.Pack(detail)
                details.append(packed)
            status = status_pb2.Status(
                code=code_pb2.RESOURCE_EXHAUSTED, message="queue full", details=details
            )
            context.abort_with_status(rpc_status.to_status(status))

        def busy(request, context) -> None:
            """Session "busy": the first call about it of each method finds the queue full."""
            method = calls[-1]["method"]
            tries = sum(c["method"] == method and c["session_id"] == "busy" for c in calls)
            if request.session_id == "busy" and tries == 1:
                queue_full(context)

        class Servicer(pb_grpc.VideoServiceServicer):
            def StartSession(self, request, context):
                seen("StartSession", request, context)
                name = "lost" if request.video_path == "lost.mp4" else "s1"
                context.send_initial_metadata((("x-sam3-replica", f"route-of-{name}"),))
                return pb.StartSessionResponse(session=session(name))

            def UploadVideo(self, request_iterator, context):
                for _ in request_iterator:
                    pass
                seen("UploadVideo", None, context)
                context.send_initial_metadata((("x-sam3-replica", "route-of-s2"),))
                return pb.UploadVideoResponse(session=session("s2"))

            def AddPrompt(self, request, context):
                seen("AddPrompt", request, context)
                busy(request, context)
                return pb.AddPromptResponse()

            def RemoveObject(self, request, context):
                seen("RemoveObject", request, context)
                return pb.RemoveObjectResponse(session=session(request.session_id))

            def ResetSession(self, request, context):
                seen("ResetSession", request, context)
                return pb.ResetSessionResponse(session=session(request.session_id))

            def Propagate(self, request, context):
                seen("Propagate", request, context)
                if request.session_id == "lost":
                    context.abort(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")
                return iter(())

            def GetSession(self, request, context):
                seen("GetSession", request, context)
                busy(request, context)
                if request.session_id == "lost":
                    context.abort(grpc.StatusCode.UNAVAILABLE, ENVOY_LOST_REPLICA)
                return pb.GetSessionResponse(session=session(request.session_id))

            def ListSessions(self, request, context):
                seen("ListSessions", request, context)
                return pb.ListSessionsResponse(sessions=[session("s1"), session("other")])

            def CloseSession(self, request, context):
                seen("CloseSession", request, context)
                return pb.CloseSessionResponse(closed=True)

        pb_grpc.add_VideoServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)
