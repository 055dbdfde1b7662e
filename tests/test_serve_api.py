"""`meter serve`'s JSON API through real HTTP requests to a server on a loopback port, with a micro model folder."""

import asyncio
import base64
import contextlib
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from meter.cli import main
from meter.predictor import Predictor
from tests.runner import environment
from tests.serving import IMAGE, serving, upload
from tests.test_predict import with_nan_weight

QUESTION = "What color is the circle?"
LIMITS = {"max_body_bytes": 1 << 20, "max_pixels": 1_000_000, "max_batch": 8, "max_wait_ms": 150, "max_pending": 64}


@pytest.fixture(scope="module")
def server(micro_checkpoints) -> str:
    with serving(micro_checkpoints("vqa"), **LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> httpx.Client:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def ask(client: httpx.Client, image: Path, question: str, **form) -> httpx.Response:
    return client.post("/api/vqa", files=upload(image), data={"question": question, **form})


def wait_for_health(url: str, condition, seconds: float = 30) -> dict:
    """/health once `condition` holds of it (the server's own count of requests in hand), failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        health = httpx.get(f"{url}/health", timeout=10).json()
        if condition(health):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def val_images(world: Path, n: int) -> list[Path]:
    return sorted((world / "images/val2014").glob("*.png"))[:n]


def test_health_says_which_model_serves(client: httpx.Client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_name"] == "vqa/step_00000002" and len(health["model_id"]) == 12


def test_the_page_and_health_answer_a_head_request(client: httpx.Client):
    """Uptime checkers and load balancers probe with HEAD: a 405 reads as a server that is down."""
    for path in ("/", "/health"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b"", (path, response.status_code)


def test_model_endpoint_lists_what_the_folder_can_do(client: httpx.Client):
    model = client.get("/api/model").json()
    assert model["heads"] == ["vqa"] and set(model["endpoints"]) == {"/api/vqa", "/api/explain"}
    assert model["explain"]["tasks"] == ["vqa"] and model["explain"]["layers"] == 1
    assert model["limits"]["max_batch"] == 8 and model["text_max_length"] == 40


def test_vqa_answers_as_the_model_called_directly(client, micro_checkpoints, shapes_tasks_world: Path):
    response = ask(client, shapes_tasks_world / IMAGE, QUESTION, top="3")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Predictor(micro_checkpoints("vqa"), "cpu").answer(shapes_tasks_world / IMAGE, QUESTION, top=3)
    assert [a["answer"] for a in body["answers"]] == [a["answer"] for a in expected]
    assert [a["score"] for a in body["answers"]] == pytest.approx([a["score"] for a in expected], abs=2e-4)
    assert body["model_id"] and 0 < body["seconds"] < 60 and body["batch"]["size"] >= 1 and body["notes"] == []


def test_requests_that_arrive_together_are_batched_with_the_answers_of_one_by_one(client, server, shapes_tasks_world):
    images = val_images(shapes_tasks_world, 6)
    questions = ["What color is the circle?", "How many shapes are there?", "Is there a red square?"] * 2
    alone = [ask(client, image, q).json() for image, q in zip(images, questions, strict=True)]

    async def together():
        async with httpx.AsyncClient(base_url=server, timeout=60) as concurrent:
            return await asyncio.gather(*(
                concurrent.post("/api/vqa", files=upload(image), data={"question": q})
                for image, q in zip(images, questions, strict=True)
            ))  # fmt: skip

    batched = [r.json() for r in asyncio.run(together())]
    assert max(b["batch"]["size"] for b in batched) > 1  # they did run together
    assert all(a["batch"]["size"] == 1 for a in alone)
    for one, many in zip(alone, batched, strict=True):
        assert [a["answer"] for a in many["answers"]] == [a["answer"] for a in one["answers"]]
        assert [a["score"] for a in many["answers"]] == pytest.approx([a["score"] for a in one["answers"]], abs=2e-4)


def test_explain_returns_the_answers_and_the_heat_map_over_the_image(client, shapes_tasks_world: Path):
    response = client.post("/api/explain", files=upload(shapes_tasks_world / IMAGE), data={"text": QUESTION})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "vqa" and body["answers"] and body["explained"]["answer"] == body["answers"][0]["answer"]
    heat = body["heatmap"]
    assert heat["method"] == "gradcam" and len(heat["grid"]) == 4 and sum(map(sum, heat["grid"])) == pytest.approx(1)
    assert set(heat["overlays"]) == {"mean", "1"}
    png = base64.b64decode(heat["overlays"]["mean"].removeprefix("data:image/png;base64,"))
    assert Image.open(io.BytesIO(png)).size == (384, 384)


def test_page_and_its_assets_come_from_the_server_alone(client: httpx.Client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    for response in (page, client.get("/static/app.js"), client.get("/static/style.css")):
        assert response.status_code == 200 and "http://" not in response.text and "https://" not in response.text


# bad input: a clear error, and the server keeps serving ---------------------------------------------------------------


def still_serves(client: httpx.Client, world: Path) -> None:
    assert ask(client, world / IMAGE, QUESTION).status_code == 200


def test_a_file_that_is_not_an_image_is_415(client, shapes_tasks_world: Path):
    files = {"image": ("notes.txt", io.BytesIO(b"what color is the circle?"), "text/plain")}
    response = client.post("/api/vqa", files=files, data={"question": QUESTION})
    assert response.status_code == 415 and response.json()["error"].startswith("notes.txt: not an image")
    still_serves(client, shapes_tasks_world)


def test_a_truncated_image_is_422(client, shapes_tasks_world: Path):
    data = (shapes_tasks_world / IMAGE).read_bytes()
    files = {"image": ("cut.png", io.BytesIO(data[: len(data) // 2]), "image/png")}
    response = client.post("/api/vqa", files=files, data={"question": QUESTION})
    assert response.status_code == 422 and response.json()["error"].startswith("cut.png: unreadable image")
    still_serves(client, shapes_tasks_world)


def test_a_tiff_cut_short_is_422_not_415(client, shapes_tasks_world: Path):
    """Pillow cannot identify a TIFF cut short at all: it was told it sent "not an image this server reads"."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buffer, "TIFF", compression="tiff_lzw")
    files = {"image": ("cut.tif", io.BytesIO(buffer.getvalue()[:-30]), "image/tiff")}
    response = client.post("/api/vqa", files=files, data={"question": QUESTION})
    assert response.status_code == 422 and response.json()["error"] == ("cut.tif: a TIFF file, truncated or damaged "
                                                                         "(its header cannot be read)")  # fmt: skip
    still_serves(client, shapes_tasks_world)


def test_an_empty_file_is_422(client):
    files = {"image": ("empty.png", io.BytesIO(b""), "image/png")}
    response = client.post("/api/vqa", files=files, data={"question": QUESTION})
    assert response.status_code == 422 and response.json()["error"] == "empty.png: the file is empty"


def bomb_png(side: int) -> bytes:
    """A PNG of side x side black 1-bit pixels: a few kilobytes that decode to side^2 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_a_decompression_bomb_is_refused_from_its_header(client, shapes_tasks_world: Path):
    bomb = bomb_png(4000)  # 16 million pixels in a small file
    assert len(bomb) < 100_000
    files = {"image": ("bomb.png", io.BytesIO(bomb), "image/png")}
    response = client.post("/api/vqa", files=files, data={"question": QUESTION})
    assert response.status_code == 413
    assert response.json()["error"] == "bomb.png: 4000x4000 is 16,000,000 pixels; this server decodes at most 1,000,000"
    still_serves(client, shapes_tasks_world)


def test_a_huge_upload_is_413_by_its_length(client, shapes_tasks_world: Path):
    files = {"image": ("big.png", io.BytesIO(b"\0" * (2 << 20)), "image/png")}
    response = client.post("/api/vqa", files=files, data={"question": QUESTION})
    assert response.status_code == 413 and "this server takes at most 1 MiB per request" in response.json()["error"]
    still_serves(client, shapes_tasks_world)


def test_a_huge_chunked_upload_is_413_by_counting(server: str, client, shapes_tasks_world: Path):
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB in all, with no Content-Length

    response = httpx.post(f"{server}/api/vqa", content=chunks(), headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 413 and "over 1,048,576 bytes" in response.json()["error"]
    still_serves(client, shapes_tasks_world)


@pytest.mark.parametrize("question", ["", "   ", "\u200b\u200b", "\ufeff \u2060"])  # zero-width characters: no word
def test_an_empty_question_is_422(client, shapes_tasks_world: Path, question: str):
    response = ask(client, shapes_tasks_world / IMAGE, question)
    assert (
        response.status_code == 422 and response.json()["error"] == "question is empty; type a question about the image"
    )


def test_an_overlong_question_is_truncated_with_a_note(client, shapes_tasks_world: Path):
    question = "what color is the circle " * 30 + "?"
    response = ask(client, shapes_tasks_world / IMAGE, question)
    assert response.status_code == 200 and response.json()["answers"]
    (note,) = response.json()["notes"]
    assert note.startswith("question has ") and "the model reads the first 40 (its text.max_length)" in note


def test_a_text_of_a_megabyte_is_refused_before_it_is_tokenized(client, shapes_tasks_world: Path):
    """A question of a million dots (within the form's field size) took seconds of the model's thread and hundreds of
    MB of memory that stayed: tokenized whole twice before the batch kept its first 40 tokens."""
    response = ask(client, shapes_tasks_world / IMAGE, "." * 900_000)
    assert response.status_code == 413
    assert response.json()["error"] == "question has 900,000 characters; this server takes at most 10,000"
    still_serves(client, shapes_tasks_world)


def test_a_multipart_body_cut_short_is_named_as_such(client, shapes_tasks_world: Path):
    """Without its closing boundary the form parser kept the parts it had: "image: Field required" or "question is
    empty" for fields the client did send."""
    request = client.build_request("POST", "/api/vqa", files=upload(shapes_tasks_world / IMAGE),
                                   data={"question": QUESTION})  # fmt: skip
    body = request.read()
    cut = body[: body.rindex(b"--", 0, len(body) - 4)]  # up to the closing boundary
    response = client.post("/api/vqa", content=cut, headers={"Content-Type": request.headers["Content-Type"]})
    assert response.status_code == 400 and "multipart body is cut short" in response.json()["error"]
    assert client.post("/api/vqa", content=body, headers={"Content-Type": request.headers["Content-Type"]}).is_success
    still_serves(client, shapes_tasks_world)


def test_a_missing_field_and_a_bad_value_are_named(client, shapes_tasks_world: Path):
    response = client.post("/api/vqa", files={"question": (None, QUESTION)})  # a form of one text field
    assert response.status_code == 422 and response.json()["error"].startswith("image: ")


@pytest.mark.parametrize("body", [{"json": {"question": QUESTION, "image": "iVBORw0KGgo="}},
                                  {"data": {"question": QUESTION}}, {"content": b"hello"}])  # fmt: skip
def test_a_body_that_is_not_a_form_is_told_the_api_takes_one(client, shapes_tasks_world: Path, body: dict):
    """`requests.post(url, json=...)` was answered 422 "image: Field required", not told what the API takes."""
    response = client.post("/api/vqa", **body)
    assert response.status_code == 415
    assert (
        "this API takes a multipart form, its images as files (e.g. curl -F image=@photo.jpg"
        in response.json()["error"]
    )
    still_serves(client, shapes_tasks_world)


def test_a_form_whose_header_names_another_boundary_is_told_so(client, shapes_tasks_world: Path):
    """It was answered "the multipart body is cut short", which sends the client looking for a lost byte."""
    body = b'--B\r\nContent-Disposition: form-data; name="question"\r\n\r\nhi\r\n--B--\r\n'
    empty = client.post("/api/vqa", content=b"", headers={"Content-Type": "multipart/form-data; boundary=C"})
    assert empty.status_code == 400 and empty.json()["error"] == "the request body is empty: send the form's fields"
    response = client.post("/api/vqa", content=body, headers={"Content-Type": "multipart/form-data; boundary=C"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("the multipart body has no part with the boundary its Content-Type "
                                               "names ('C')")  # fmt: skip
    still_serves(client, shapes_tasks_world)


def test_an_image_sent_as_a_text_field_is_told_to_come_as_a_file(client, shapes_tasks_world: Path):
    """`curl -F 'image=<photo.png'` sends the file's bytes as a text field: the answer was "image: Value error,
    Expected UploadFile, received: <class 'str'>"."""
    text = (shapes_tasks_world / IMAGE).read_bytes().decode("latin-1")
    response = client.post("/api/vqa", files={"image": (None, text), "question": (None, QUESTION)})  # curl -F's form
    assert response.status_code == 422
    assert response.json()["error"] == "image: send the image as a file (curl -F image=@photo.jpg), not as a text field"
    response = ask(client, shapes_tasks_world / IMAGE, QUESTION, top="0")
    assert response.status_code == 422 and response.json()["error"] == "top 0 must be from 1 to 50"


@pytest.mark.parametrize("endpoint", ["caption", "nlvr2", "match", "snli-ve"])
def test_an_endpoint_the_model_lacks_a_head_for_names_what_it_has(client, shapes_tasks_world: Path, endpoint: str):
    files = upload(shapes_tasks_world / IMAGE) | upload(shapes_tasks_world / IMAGE, "left")
    files |= upload(shapes_tasks_world / IMAGE, "right")
    response = client.post(f"/api/{endpoint}", files=files, data={"text": "a red circle."})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith(f"/api/{endpoint} needs ") and "has heads: vqa" in error
    assert error.endswith("it serves: /api/vqa, /api/explain")


def test_overload_answers_503_and_the_server_keeps_serving(micro_checkpoints, shapes_tasks_world: Path):
    image = shapes_tasks_world / IMAGE
    with serving(micro_checkpoints("vqa"), max_pending=2, max_batch=16, max_wait_ms=1500) as url:

        async def flood():
            async with httpx.AsyncClient(base_url=url, timeout=60) as concurrent:
                return await asyncio.gather(*(
                    concurrent.post("/api/vqa", files=upload(image), data={"question": QUESTION}) for _ in range(6)
                ))  # fmt: skip

        statuses = sorted(r.status_code for r in asyncio.run(flood()))
        assert statuses == [200, 200, 503, 503, 503, 503]
        with httpx.Client(base_url=url, timeout=60) as client:
            busy = client.post("/api/vqa", files=upload(image), data={"question": QUESTION})
            assert busy.status_code == 200 and client.get("/health").json()["pending"] == 0


def test_limits_out_of_range_are_refused_by_the_command(micro_checkpoints, capsys):
    code = main(["serve", "--model", str(micro_checkpoints("vqa")), "--max-batch", "0"])
    assert code == 2 and "--max-batch 0 must be at least 1" in capsys.readouterr().err


@contextmanager
def meter_serve(model: Path, log_file: Path, *options: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """`meter serve` in a process of its own on a free loopback port, once it answers /health."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = log_file.open("w")
    command = [sys.executable, "-m", "meter", "serve", "--model", str(model), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment())
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.5)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_meter_serve_binds_to_loopback_and_answers(micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path):
    with meter_serve(micro_checkpoints("vqa"), tmp_path / "serve.log") as (port, _):
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.json()["status"] == "ok"
        assert f"Uvicorn running on http://127.0.0.1:{port}" in (tmp_path / "serve.log").read_text()
        answer = httpx.post(f"http://127.0.0.1:{port}/api/vqa", files=upload(shapes_tasks_world / IMAGE),
                            data={"question": QUESTION}, timeout=60)  # fmt: skip
        assert answer.status_code == 200 and answer.json()["answers"]


@pytest.mark.slow
def test_requests_queued_when_the_server_is_stopped_get_a_json_503_not_a_500(micro_checkpoints, shapes_tasks_world,
                                                                             tmp_path: Path):  # fmt: skip
    """uvicorn cancelled what was still queued after its 5 s of grace: 284 of 400 clients got a plain-text 500 and
    the log a traceback each. The queue is answered 503 ("the server is stopping") as the stop is asked for."""
    import signal

    image = (shapes_tasks_world / IMAGE).read_bytes()
    options = ("--max-batch", "1", "--max-pending", "400")
    with meter_serve(micro_checkpoints("captioning"), tmp_path / "serve.log", *options) as (port, process):

        async def flood() -> list:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client:

                async def ask():
                    try:
                        return await client.post("/api/caption", files={"image": ("i.png", image, "image/png")},
                                                 data={"beam": "8"})  # fmt: skip
                    except httpx.TransportError as error:  # not yet connected when the server stopped listening
                        return error

                asks = [asyncio.ensure_future(ask()) for _ in range(200)]
                while not any(a.done() for a in asks):
                    await asyncio.sleep(0.01)
                process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*asks)

        responses = asyncio.run(flood())
    answered = [r for r in responses if isinstance(r, httpx.Response)]
    statuses = sorted({r.status_code for r in answered})
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses
    assert all("the server is stopping" in r.json()["error"] for r in answered if r.status_code == 503)
    assert "CancelledError" not in (tmp_path / "serve.log").read_text()


def test_requests_past_max_pending_are_refused_before_their_bodies_are_read(micro_checkpoints):
    """--max-pending counted only decoded requests: a flood of large uploads was read and decoded (gigabytes) before
    any 503. Two uploads stalled mid-body now hold the two places; a third is refused at once."""
    import socket
    from urllib.parse import urlsplit

    with serving(micro_checkpoints("vqa"), max_pending=2) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        head = (f"POST /api/vqa HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 1000000\r\n\r\n--b\r\n")  # fmt: skip
        stalled = [socket.create_connection((host, port)) for _ in range(2)]
        try:
            for connection in stalled:
                connection.sendall(head.encode())
            wait_for_health(url, lambda health: health["incoming"] == 2)  # both in hand, their bodies being read
            refused = httpx.post(f"{url}/api/vqa", files={"image": ("x.png", b"\x89PNG", "image/png")},
                                 data={"question": QUESTION}, timeout=10)  # fmt: skip
        finally:
            for connection in stalled:
                connection.close()
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "2 requests are already being read, waiting or running (the limit is 2)" in refused.json()["error"]
        wait_for_health(url, lambda health: health["incoming"] == 0)
        again = httpx.post(f"{url}/api/vqa", files={"image": ("x.png", b"not an image", "image/png")},
                           data={"question": QUESTION}, timeout=30)  # fmt: skip
        assert again.status_code == 415  # the places are free again once the stalled ones are gone


def test_a_malformed_form_an_unknown_path_and_a_wrong_method_are_json_errors_like_the_rest(client: httpx.Client):
    """Starlette's own 400/404/405 came as {"detail": ...}: the page showed "400: undefined"."""
    malformed = client.post(
        "/api/vqa", content=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    unknown, method = client.get("/api/nothing"), client.get("/api/vqa")
    for response, status in ((malformed, 400), (unknown, 404), (method, 405)):
        assert response.status_code == status and response.json()["status"] == status
        assert response.json()["error"], response.json()


def test_a_body_limit_under_a_byte_is_named_by_its_option_and_a_folder_given_as_dot_has_a_name(
    micro_checkpoints, capsys, monkeypatch
):
    from meter.serve.service import model_name

    assert main(["serve", "--model", str(micro_checkpoints("vqa")), "--max-body-mb", "0.0000001"]) == 2
    assert "--max-body-mb 1e-07 is less than a byte" in capsys.readouterr().err
    monkeypatch.chdir(micro_checkpoints("vqa"))
    assert model_name(Path(".")) == "vqa/step_00000002"  # the run and its checkpoint, as for the full path
    with serving(Path("."), **LIMITS) as url:  # `meter serve --model .`: the client learns where the folder is
        assert httpx.get(f"{url}/api/model", timeout=60).json()["folder"] == str(micro_checkpoints("vqa").absolute())


def test_an_explain_answer_outside_the_vocabulary_is_refused_without_costing_its_batch_mates(
    micro_checkpoints, shapes_tasks_world: Path
):
    """Checked inside the batch, one bad answer failed the batch, whose requests then ran again one by one."""
    image = shapes_tasks_world / IMAGE
    with serving(micro_checkpoints("vqa"), max_batch=16, max_wait_ms=1500) as url:

        async def together():
            async with httpx.AsyncClient(base_url=url, timeout=60) as concurrent:
                asks = [{"text": QUESTION}] * 3 + [{"text": QUESTION, "answer": "no such answer"}]
                return await asyncio.gather(*(concurrent.post("/api/explain", files=upload(image), data=form)
                                              for form in asks))  # fmt: skip

        before = httpx.get(f"{url}/health").json()["batches_run"]
        responses = asyncio.run(together())
        ran = httpx.get(f"{url}/health").json()["batches_run"] - before
    assert [r.status_code for r in responses] == [200, 200, 200, 422]
    assert responses[3].json()["error"] == "answer 'no such answer' is not in the model's answer vocabulary"
    assert ran == 1  # the three good ones in one forward pass


def test_requests_whose_clients_gave_up_leave_the_queue_unrun(micro_checkpoints, shapes_tasks_world: Path):
    """57 clients that timed out after 0.5 s still had their jobs run (and held their places in --max-pending): a
    client that hangs up cancels its request."""
    image = (shapes_tasks_world / IMAGE).read_bytes()
    with serving(micro_checkpoints("captioning"), max_batch=1) as url:

        async def impatient() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=0.3, limits=httpx.Limits(max_connections=40)) as c:

                async def ask() -> None:
                    with contextlib.suppress(httpx.TimeoutException):
                        await c.post("/api/caption", files={"image": ("i.png", image, "image/png")}, data={"beam": "8"})

                await asyncio.gather(*(ask() for _ in range(40)))

        before = httpx.get(f"{url}/health").json()["batches_run"]
        asyncio.run(impatient())
        health = wait_for_health(url, lambda health: health["pending"] == health["incoming"] == 0)
        answered = httpx.post(f"{url}/api/caption", files=upload(shapes_tasks_world / IMAGE), timeout=30)
    assert health["batches_run"] - before < 40, health  # some left the queue unrun (all 40 ran before)
    assert answered.status_code == 200


def test_a_handler_that_answered_is_not_cancelled_by_the_end_of_its_response():
    """Once a response is sent uvicorn's `receive` says "disconnect": the hang-up watcher took it for a client gone
    and cancelled handlers still closing their uploads (a spooled file over 1 MB left open until collected)."""
    from starlette.types import Receive, Scope, Send

    from meter.serve.app import answer_unless_gone
    from meter.serve.server import running

    ended: list[str] = []

    async def answers_then_tidies(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        try:
            await asyncio.sleep(0.3)  # closing the uploads' files, after the answer
            ended.append("tidied")
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await answer_unless_gone(answers_then_tidies, scope, receive, send)
        else:
            await answers_then_tidies(scope, receive, send)

    with running(app) as url:
        for _ in range(3):
            assert httpx.post(url, content=b"x" * 2_000_000, timeout=30).text == "ok"
        deadline = time.monotonic() + 10
        while len(ended) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert ended == ["tidied"] * 3


def test_a_stalled_upload_is_answered_408_and_frees_its_place(micro_checkpoints):
    """Headers and a first part of the body, then nothing: with --max-pending places held so, the server answered
    every other request 503 for as long as the stalled clients liked."""
    import socket
    from urllib.parse import urlsplit

    with serving(micro_checkpoints("vqa"), max_pending=1, body_idle_s=1) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        with socket.create_connection((host, port)) as stalled:
            stalled.sendall(f"POST /api/vqa HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
                            "boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n".encode())  # fmt: skip
            stalled.settimeout(10)
            parts = []
            while part := stalled.recv(4096):  # the server closes the connection after its answer
                parts.append(part)
            reply = b"".join(parts).decode()
        assert reply.startswith("HTTP/1.1 408") and "sent nothing for 1 s" in reply
        health = wait_for_health(url, lambda health: health["incoming"] == 0)
        assert health["pending"] == 0


def test_an_upload_trickled_past_the_body_deadline_is_answered_408(micro_checkpoints):
    """A byte now and then, never idle long enough for the idle limit: the place in --max-pending was held for as long
    as the client liked, every other request answered 503."""
    import socket
    from urllib.parse import urlsplit

    with serving(micro_checkpoints("vqa"), max_pending=1, body_idle_s=1, body_total_s=2) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        with socket.create_connection((host, port)) as trickling:
            trickling.sendall(f"POST /api/vqa HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
                              "boundary=b\r\nContent-Length: 1000\r\n\r\n".encode())  # fmt: skip
            trickling.settimeout(0.5)
            reply = b""
            for _ in range(20):  # a byte each half second, for up to 10 s
                try:
                    trickling.sendall(b"-")
                    reply += trickling.recv(4096)
                except TimeoutError:
                    continue
                except OSError:  # the server closed the connection after its answer
                    break
                if reply:
                    break
            trickling.settimeout(5)
            with contextlib.suppress(OSError):
                while part := trickling.recv(4096):  # the rest of the answer, until the server closes
                    reply += part
        assert reply.decode().startswith("HTTP/1.1 408") and "took over 2 s" in reply.decode()
        assert wait_for_health(url, lambda health: health["incoming"] == 0)["pending"] == 0


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--max-pixels", "400000000"], "--max-pixels = 400000000 must be in 1..178,956,970"),
     (["--host", "10.255.255.1"], "--host 10.255.255.1: not an address of this machine")],
)  # fmt: skip
def test_a_limit_past_pillows_guard_or_a_foreign_address_is_refused(micro_checkpoints, capsys, option, message):
    code = main(["serve", "--checkpoint", str(micro_checkpoints("vqa")), "--port", "0", *option])
    assert code == 2 and message in capsys.readouterr().err


def test_a_busy_port_is_one_line_before_the_model_loads(micro_checkpoints, capsys):
    """uvicorn's own error after the model had loaded: several lines, exit 3."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--checkpoint", str(micro_checkpoints("vqa")), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)" in err
    assert "serving" not in err  # refused before the model loaded


def test_a_model_whose_outputs_are_nan_is_a_500_that_names_the_weight(micro_checkpoints, shapes_tasks_world, tmp_path):
    """The answers came back 200, a `null` score ranked first (NaN, which JSON has not), and the map explained it."""
    model = with_nan_weight(micro_checkpoints("vqa"), tmp_path / "nan", "heads.vqa.3.bias")
    expected = f"{model}: the model's outputs are not finite (NaN or inf); its weights hold NaN or inf (the first:"
    with serving(model, **LIMITS) as url, httpx.Client(base_url=url, timeout=60) as client:
        for endpoint, form in (("vqa", {"question": QUESTION}), ("explain", {"text": QUESTION})):
            response = client.post(f"/api/{endpoint}", files=upload(shapes_tasks_world / IMAGE), data=form)
            assert response.status_code == 500 and response.json()["error"].startswith(expected), response.text
        assert client.get("/health").json()["status"] == "ok"


def test_a_multipart_body_with_an_epilogue_is_answered(client, shapes_tasks_world: Path):
    """RFC 2046 allows text after the closing boundary; past 64 bytes of it the body was refused as cut short."""
    request = client.build_request("POST", "/api/vqa", files=upload(shapes_tasks_world / IMAGE),
                                   data={"question": QUESTION})  # fmt: skip
    body = request.read() + b"This is the epilogue. It is to be ignored. " * 3
    response = client.post("/api/vqa", content=body, headers={"Content-Type": request.headers["Content-Type"]})
    assert response.status_code == 200 and response.json()["answers"], response.text
