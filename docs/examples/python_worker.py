"""A minimal mlx-router worker in Python with nats-py (protocol v1, docs/protocol.md; a v2 controller
sends it the v1 subset of chat requests: see "Writing a v2 worker" there to serve tools, JSON mode, etc.).

    pip install nats-py        # Python >= 3.11
    NATS_URL=nats://127.0.0.1:4222 WORKER_ID=py-1 python3 python_worker.py

Replace generate() with a real engine (mlx_lm, llama.cpp, an HTTP server...).
"""
import asyncio, json, os, random, signal, uuid
import nats

PREFIX = "mlx.v1"                      # must equal the controllers' nats.subjectPrefix
WORKER_ID = os.environ.get("WORKER_ID", "py-1")   # [A-Za-z0-9_-]{1,64}, unique in the cluster
MODELS = ["mlx-community/Llama-3.2-3B-Instruct-4bit"]
MAX_CONCURRENT = 4
HEARTBEAT_S = 2.0                      # keep well under the controllers' discovery.offlineAfterMs
INSTANCE = str(uuid.uuid4())           # this process; heartbeats, bye and every reply carry it

in_flight: dict[str, tuple[asyncio.Task, str]] = {}   # reply subject -> (task, attempt token)
state = "ready"


async def generate(req):
    """Your engine: yields pieces of text. This one echoes the last message, word by word."""
    words = req["messages"][-1]["content"].split() or ["(empty)"]
    for i, word in enumerate(words[: req.get("max_tokens", 64)]):
        await asyncio.sleep(0.01)
        yield word if i == 0 else " " + word


async def main():
    global state
    nc = await nats.connect(servers=[os.environ.get("NATS_URL", "nats://127.0.0.1:4222")])

    async def send(to, body, token, seq=None):
        headers = {"Mlx-Token": token, "Mlx-Instance": INSTANCE}   # on every reply message
        if seq is not None:
            headers["Mlx-Seq"] = str(seq)
        await nc.publish(to, json.dumps(body).encode(), headers=headers)

    async def heartbeat():
        await nc.publish(f"{PREFIX}.heartbeat", json.dumps({
            "type": "heartbeat", "version": 1, "id": WORKER_ID, "models": MODELS, "engine": "python-echo",
            "max_concurrent": MAX_CONCURRENT, "in_flight": len(in_flight), "state": state,
            "interval_ms": int(HEARTBEAT_S * 1000), "continuation": False, "instance": INSTANCE}).encode())

    async def serve(reply, req, deadline_s, token):
        stream, seq, text, n = req["stream"], 0, "", 0
        try:
            async with asyncio.timeout(deadline_s):          # the controller's Mlx-Deadline-Ms
                async for piece in generate(req):
                    n += 1
                    if stream:
                        await send(reply, {"type": "chunk", "seq": seq, "text": piece}, token, seq)
                        seq += 1
                    else:
                        text += piece
            finish = "length" if n == req.get("max_tokens") else "stop"
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n}
            if stream:
                await send(reply, {"type": "end", "seq": seq, "finish_reason": finish, "usage": usage}, token, seq)
            else:
                await send(reply, {"type": "result", "text": text, "finish_reason": finish, "usage": usage}, token)
        except (asyncio.CancelledError, TimeoutError):
            pass                                             # cancelled or expired: answer nothing
        except Exception as e:                               # engine failure
            err = {"type": "error", "code": "WORKER_ERROR", "message": str(e),
                   "outcome": "committed" if seq > 0 else "worker_failure"}
            if stream:
                err["seq"] = seq
            await send(reply, err, token, seq if stream else None)
        finally:
            in_flight.pop(reply, None)

    async def on_infer(msg):
        if not msg.reply:
            return
        h = msg.headers or {}
        deadline_ms = float(h.get("Mlx-Deadline-Ms", "inf"))
        token = h.get("Mlx-Token", "")
        if deadline_ms <= 0:
            return                                           # the controller gave up already
        def fail(code, outcome, message, **extra):
            return send(msg.reply, {"type": "error", "code": code, "outcome": outcome, "message": message, **extra}, token)
        if state != "ready":
            return await fail("WORKER_UNAVAILABLE", "not_delivered", f"worker {WORKER_ID} is shutting down")
        try:
            req = json.loads(msg.data)
            assert isinstance(req["messages"], list) and req["messages"]
        except Exception:
            return await fail("REQUEST_VALIDATION_FAILED", "caller", "body must be a chat request")
        if req.get("model") not in MODELS:
            return await fail("MODEL_NOT_FOUND", "caller", f"worker {WORKER_ID} does not serve {req.get('model')}")
        if len(in_flight) >= MAX_CONCURRENT:
            return await fail("WORKER_OVERLOADED", "rejected", "at capacity", retry_after_ms=100)
        key = msg.reply  # unique per attempt; request ids come from clients and may repeat
        if key in in_flight:
            return await fail("REQUEST_VALIDATION_FAILED", "caller", "reply subject already in flight")
        deadline_s = None if deadline_ms == float("inf") else deadline_ms / 1000
        in_flight[key] = (asyncio.create_task(serve(msg.reply, req, deadline_s, token)), token)

    async def on_cancel(msg):
        try:
            c = json.loads(msg.data)
            task, token = in_flight[c["reply"]]
        except Exception:
            return                                           # malformed, or not in flight
        if token and c.get("token") == token:                # only the sender of the request may cancel it
            task.cancel()

    async def on_control(msg):
        try:
            notice = json.loads(msg.data)
        except Exception:
            return
        if notice.get("type") == "refuse" and notice.get("instance") == INSTANCE:
            print(f"worker id '{WORKER_ID}' is already served by another live worker process; use a unique id")
            os._exit(3)

    last_discovery = [float("-inf")]
    async def on_discover(msg):
        loop = asyncio.get_running_loop()
        if loop.time() - last_discovery[0] < HEARTBEAT_S:
            return                                           # at most one answer per interval
        last_discovery[0] = loop.time()
        await asyncio.sleep(random.uniform(0, min(0.25, HEARTBEAT_S / 4)))
        await heartbeat()

    await nc.subscribe(f"{PREFIX}.worker.{WORKER_ID}.infer", cb=on_infer)
    await nc.subscribe(f"{PREFIX}.worker.{WORKER_ID}.cancel", cb=on_cancel)
    await nc.subscribe(f"{PREFIX}.worker.{WORKER_ID}.control", cb=on_control)
    await nc.subscribe(f"{PREFIX}.discover", cb=on_discover)
    await nc.flush()                                         # subscribed before anyone hears of us
    await heartbeat()

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
        except TimeoutError:
            await heartbeat()

    state = "draining"                                       # no new work is routed to us
    await heartbeat()
    if in_flight:
        await asyncio.wait([t for t, _ in in_flight.values()], timeout=10)
    for task, _ in list(in_flight.values()):
        task.cancel()
    await nc.publish(f"{PREFIX}.bye", json.dumps({"type": "bye", "id": WORKER_ID, "instance": INSTANCE}).encode())
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
