"""GAN Paint: concept loading, the stroke renderer against a numpy reference, the HTTP API and its
refusals, the paint mode as a real server, and the page driven in headless Chromium."""
import base64
import contextlib
import io
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jaxdissect import parallel
from jaxdissect.causal.concept import ace_record
from jaxdissect.checkpoint import save_model
from jaxdissect.errors import UserError
from jaxdissect.models.proggan import ProGAN
from jaxdissect.paint.concepts import Concept, check_against, load_concepts
from jaxdissect.paint.guard import HostGuard, allowed_hosts
from jaxdissect.paint.masks import decode_mask, encode_mask, packed_length
from jaxdissect.paint.painter import Stroke
from jaxdissect.paint.server import create_app
from jaxdissect.report.unit_images import to_bytes

import cli_helpers  # noqa: E402  (tests/ is on sys.path)

REPO = cli_helpers.REPO
SIZES = (16, 16, 16, 8, 8, 8)   # 64x64 images; layer4 is 8x8 (16 units), layer8 32x32 (8 units)
R = 64
SEED = 3
MAX_STROKES = 8
CONCEPTS = (Concept("door", "layer8", (0, 2, 5), (7.0, 6.0, 8.0), "ace", "test"),
            Concept("tree", "layer4", (1, 4, 9, 12), (5.0, 4.0, 6.0, 3.0), "dissection", "test"))


@pytest.fixture(scope="module")
def model():
    generator = ProGAN(SIZES)
    return generator, generator.init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(*model, CONCEPTS, seed=SEED, max_strokes=MAX_STROKES))


def box(r0, r1, c0, c1):
    mask = np.zeros((R, R), bool)
    mask[r0:r1, c0:c1] = True
    return mask


def decode_png(data_url):
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def reach(generator, layer):
    """(cell size, pixels) : a change in one cell of `layer` stays within `pixels` of the cell's pixels."""
    start = generator.layer_index(layer) + 1
    later = generator.specs[start:]
    return (generator.resolution // generator.specs[start - 1].resolution,
            sum(s.padding * generator.resolution // s.resolution for s in later))


def dilate(mask, pixels):
    rows, cols = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[max(rows.min() - pixels, 0):rows.max() + pixels + 1, max(cols.min() - pixels, 0):cols.max() + pixels + 1] = True
    return out


# ---- masks and concepts ------------------------------------------------------------

def test_mask_round_trip_and_refusals():
    mask = np.random.default_rng(0).random((R, R)) > 0.7
    text = encode_mask(mask)
    assert len(text) == packed_length(R) == 4 * -(-R * R // 8 // 3)
    np.testing.assert_array_equal(decode_mask(text, R), mask)
    # Bit order: the first pixel is the most significant bit of the first byte.
    assert base64.b64decode(encode_mask(box(0, 1, 0, 1)))[0] == 0x80
    for bad, reason in ((text[:-4], "base64 characters"), ("!" * len(text), "not valid base64"),
                        (encode_mask(np.zeros((32, 32), bool)), "64x64")):
        with pytest.raises(ValueError, match=reason):
            decode_mask(bad, R)


def write_dissection(root, generator_dir=None, ace=()):
    """A finished-dissection folder with known numbers: dissect.json, stats/layer4.npz, run.json, ace/."""
    labels = ["-", "sky", "tree", "door", "grass"]
    rng = np.random.default_rng(1)
    iou = rng.random((16, len(labels)))
    act_sum = rng.random((16, len(labels))) * 100
    class_pixels = np.array([0, 50, 40, 30, 0])
    interpretable_labels = {0: "tree", 3: "sky", 7: "tree", 8: "door"}  # grass labels no unit
    units = [{"unit": u, "label": interpretable_labels.get(u, "grass"), "interpretable": u in interpretable_labels}
             for u in range(16)]
    summary = {"settings": {"rule": "iqr", "readout": "reference"}, "labels": labels,
               "categories": [""] + ["object"] * 4,
               "layers": {"layer4": {"unit": units}, "layer6": {"unit": units[:8]}}}
    os.makedirs(os.path.join(root, "stats"))
    with open(os.path.join(root, "dissect.json"), "w") as f:
        json.dump(summary, f)
    np.savez(os.path.join(root, "stats", "layer4.npz"), reference_iqr_iou=iou, act_sum=act_sum,
             class_pixels=class_pixels)
    with open(os.path.join(root, "run.json"), "w") as f:
        json.dump({"flags": {"generator": generator_dir, "seed": SEED}}, f)
    for name, content in ace:
        os.makedirs(os.path.join(root, "ace", name))
        with open(os.path.join(root, "ace", name, "ace.json"), "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
    return labels, iou, act_sum / np.maximum(class_pixels, 1)


def ace_file(layer, name, units, values, n_units):
    """An ace.json record whose causal units are `units` with insertion values `values`."""
    ranking = list(units) + [u for u in range(n_units) if u not in units]
    value = np.zeros(n_units)
    value[list(units)] = values
    alpha = np.linspace(1, 0, n_units)[np.argsort(ranking)]
    return ace_record(layer, name, 3, alpha, ranking, len(units), value, {}, [])


def test_concepts_prefer_ace_and_fall_back_to_top_iou_units(tmp_path):
    door = ace_file("layer8", "door", [5, 0, 2], [1.5, 2.5, 3.5], 8)
    labels, iou, mean = write_dissection(str(tmp_path), ace=[("door", door)])
    concepts = load_concepts(str(tmp_path), n_units=3)
    assert [c.name for c in concepts] == ["door", "sky", "tree"]   # grass has no interpretable unit
    by_name = {c.name: c for c in concepts}
    assert by_name["door"] == Concept("door", "layer8", (5, 0, 2), (1.5, 2.5, 3.5), "ace",
                                      str(tmp_path / "ace" / "door" / "ace.json"))
    for name in ("sky", "tree"):
        c = labels.index(name)
        top = sorted(range(16), key=lambda u: -iou[u, c])[:3]
        assert by_name[name].layer == "layer4" and by_name[name].origin == "dissection"
        assert list(by_name[name].units) == top
        np.testing.assert_allclose(by_name[name].values, mean[top, c], rtol=1e-12)


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not a readable ace.json"),
    (json.dumps(dict(ace_file("layer4", "door", [1, 2], [1.0, 2.0], 16), value=[1.0])), "inconsistent"),
    (json.dumps({"layer": "layer4", "class": "door", "causal_units": [1]}), "KeyError"),
])
def test_malformed_ace_files_are_user_errors_naming_the_file(tmp_path, content, fragment):
    write_dissection(str(tmp_path), ace=[("door", content)])
    with pytest.raises(UserError, match=fragment) as error:
        load_concepts(str(tmp_path))
    assert "ace.json" in str(error.value)


def test_concepts_refuse_undissected_layers_and_foreign_units(tmp_path, model):
    write_dissection(str(tmp_path))
    with pytest.raises(UserError, match="layer7.*dissected: layer4, layer6"):
        load_concepts(str(tmp_path), layer="layer7")
    generator, _ = model
    with pytest.raises(UserError, match="layer99"):
        check_against(generator, [Concept("x", "layer99", (0,), (1.0,), "ace", "f")])
    with pytest.raises(UserError, match="unit 8 but layer8 has 8 units"):
        check_against(generator, [Concept("x", "layer8", (8,), (1.0,), "ace", "f")])


# ---- the renderer ------------------------------------------------------------------

@pytest.fixture(scope="module")
def painter(client):
    return client.app.state.painter


def reference_render(generator, params, sample, strokes):
    """The stroke formula applied with numpy at layer4, then layer8, between the generator's h and f."""
    z = parallel.latents(SEED, sample, sample + 1, generator.latent_size)
    r4 = apply_strokes_numpy(generator.h(params, z, "layer4")["layer4"], "layer4", strokes)
    r8 = generator.h(params, z, "layer8", edits={"layer4": lambda _: jnp.asarray(r4)})["layer8"]
    r8 = apply_strokes_numpy(r8, "layer8", strokes)
    return to_bytes(np.asarray(generator.f(params, r8, "layer8"))[0])


def apply_strokes_numpy(featuremap, layer, strokes):
    r = np.asarray(featuremap, np.float64)
    entry = r.copy()
    height, width, units = r.shape[1:]
    for s in strokes:
        concept = CONCEPTS[s.concept]
        if s.mode != "erase" and concept.layer != layer:
            continue
        cells = s.mask.reshape(height, R // height, width, R // width).mean(axis=(1, 3))
        unit_weight = np.ones(units) if s.mode == "erase" else np.isin(np.arange(units), concept.units)
        target = np.zeros(units)
        if s.mode == "add":
            target[list(concept.units)] = concept.values
        weight = s.strength * cells[None, :, :, None] * unit_weight
        r = (1 - weight) * r + weight * (entry if s.mode == "erase" else target)
    return np.asarray(r, np.float32)


def test_strokes_compose_in_order_like_the_numpy_reference(model, painter):
    generator, params = model
    strokes = [Stroke(1, "add", 0.8, box(8, 40, 8, 40)),
               Stroke(0, "add", 1.0, box(20, 50, 5, 30)),
               Stroke(0, "remove", 0.5, box(30, 60, 20, 61)),
               Stroke(1, "remove", 1.0, box(0, 20, 40, 64)),
               Stroke(0, "erase", 1.0, box(25, 33, 3, 19))]
    got = painter.render(7, strokes)
    want = reference_render(generator, params, 7, strokes)
    assert np.abs(got.astype(int) - want).max() <= 1
    assert (got != painter.render(7)).any(axis=2).mean() > 0.3


def test_empty_masks_and_zero_strength_leave_the_image_bit_for_bit(painter):
    plain = painter.render(4)
    empty = np.zeros((R, R), bool)
    strokes = [Stroke(0, "add", 1.0, empty), Stroke(1, "remove", 1.0, empty), Stroke(1, "erase", 1.0, empty),
               Stroke(0, "add", 0.0, box(0, 64, 0, 64))]
    np.testing.assert_array_equal(painter.render(4, strokes), plain)


def test_painting_changes_the_image_inside_the_stroke_only(model, painter):
    generator, _ = model
    for concept, mask in ((0, box(10, 20, 36, 54)), (1, box(24, 40, 24, 40))):
        for mode in ("add", "remove"):
            changed = (painter.render(2, [Stroke(concept, mode, 1.0, mask)]) != painter.render(2)).any(axis=2)
            cell, pixels = reach(generator, CONCEPTS[concept].layer)
            assert not (changed & ~dilate(mask, pixels + cell)).any(), (concept, mode)
            assert changed[mask].mean() > 0.5, (concept, mode)


def test_erasing_a_cell_aligned_stroke_restores_the_image_exactly(painter):
    mask = box(16, 32, 8, 40)   # whole 8x8 cells of layer4, so every cell fraction is 0 or 1
    strokes = [Stroke(1, "add", 1.0, mask), Stroke(0, "add", 1.0, mask)]
    assert (painter.render(5, strokes) != painter.render(5)).any()
    np.testing.assert_array_equal(painter.render(5, strokes + [Stroke(0, "erase", 1.0, mask)]),
                                  painter.render(5))


def test_no_stroke_list_recompiles_the_renderer(painter):
    before = painter.traces
    for k in range(MAX_STROKES + 1):
        strokes = [Stroke(k % 2, ("add", "remove", "erase")[j % 3], 0.5 + 0.05 * j, box(j, j + 9, 2 * k, 2 * k + 5))
                   for j in range(k)]
        painter.render(k, strokes)
    assert before == painter.traces == 1


# ---- the HTTP API ------------------------------------------------------------------

def stroke(mode="add", concept="door", strength=1.0, mask=None):
    body = {"mode": mode, "concept": concept, "strength": strength,
            "mask": encode_mask(box(8, 24, 8, 24) if mask is None else mask)}
    return {k: v for k, v in body.items() if v is not None}


def render(client, strokes=(), sample=1):
    return client.post("/api/render", json={"sample": sample, "strokes": list(strokes)})


def test_page_and_its_files_are_served_without_outside_references(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/app.js"' in page.text and 'href="/style.css"' in page.text
    for path, kind in (("/app.js", "javascript"), ("/style.css", "css")):
        response = client.get(path)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http:" not in response.text and "https:" not in response.text
    assert "http:" not in page.text and "https:" not in page.text
    assert client.get("/docs").status_code == 404   # it would load from a CDN
    assert client.get("/../pyproject.toml").status_code == 404


def test_openapi_schema_documents_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/info", "/api/concepts", "/api/samples", "/api/render"} <= set(schema["paths"])
    stroke_schema = schema["components"]["schemas"]["StrokeRequest"]["properties"]
    assert stroke_schema["strength"]["maximum"] == 1.0 and "packbits" in stroke_schema["mask"]["description"]


def test_info_and_concepts(client):
    info = client.get("/api/info").json()
    assert info["resolution"] == R and info["max_strokes"] == MAX_STROKES and info["seed"] == SEED
    assert info["layers"] == ["layer4", "layer8"] and info["mask_length"] == len(encode_mask(box(0, 1, 0, 1)))
    assert client.get("/api/concepts").json() == [
        {"name": "door", "layer": "layer8", "n_units": 3, "origin": "ace"},
        {"name": "tree", "layer": "layer4", "n_units": 4, "origin": "dissection"}]
    assert [c["name"] for c in client.get("/api/concepts?layer=layer4").json()] == ["tree"]
    assert client.get("/api/concepts?layer=layer1").json() == []
    bad = client.get("/api/concepts?layer=nope")
    assert bad.status_code == 422 and "unknown layer 'nope'" in bad.json()["detail"]


def test_samples_are_the_generators_images_by_index(client, model):
    generator, params = model
    samples = client.get("/api/samples?start=5&count=3").json()["samples"]
    assert [s["index"] for s in samples] == [5, 6, 7]
    z = parallel.latents(SEED, 5, 8, generator.latent_size)
    want = to_bytes(np.asarray(generator(params, z)[0]))
    for s, expected in zip(samples, want):
        assert np.abs(decode_png(s["image"]).astype(int) - expected).max() <= 1
    assert decode_png(client.get("/api/samples").json()["samples"][0]["image"]).shape == (R, R, 3)


@pytest.mark.parametrize("query", ["start=-1", "count=0", "count=33", "start=2147483648", "start=2147483647&count=2",
                                   "start=abc"])
def test_sample_ranges_are_checked(client, query):
    response = client.get(f"/api/samples?{query}")
    assert response.status_code == 422 and response.json()["detail"]


def test_render_applies_strokes_and_an_empty_mask_changes_nothing(client):
    plain = render(client).json()
    sample_image = client.get("/api/samples?start=1&count=1").json()["samples"][0]["image"]
    assert plain["image"] == sample_image and plain["strokes"] == 0
    painted = render(client, [stroke()]).json()
    assert painted["strokes"] == 1 and painted["image"] != plain["image"]
    blank = render(client, [stroke(mask=np.zeros((R, R), bool)), stroke("erase", None, mask=np.zeros((R, R), bool))])
    np.testing.assert_array_equal(decode_png(blank.json()["image"]), decode_png(plain["image"]))
    undone = render(client, [stroke(), stroke("erase", None)]).json()   # cell-aligned mask: exact
    assert undone["image"] == plain["image"]


@pytest.mark.parametrize("body, fragment", [
    ({"sample": 1, "strokes": [stroke(concept="castle")]}, "unknown concept 'castle'; known: door, tree"),
    ({"sample": 1, "strokes": [stroke(concept=None)]}, "needs a concept"),
    ({"sample": 1, "strokes": [stroke(mask=np.zeros((32, 32), bool))]}, "a 64x64 mask has 684"),
    ({"sample": 1, "strokes": [dict(stroke(), mask="#" * 684)]}, "not valid base64"),
    ({"sample": 1, "strokes": [dict(stroke(), mask=[1, 0, 1])]}, "string"),
    ({"sample": 1, "strokes": [stroke(strength=1.5)]}, "less than or equal to 1"),
    ({"sample": 1, "strokes": [stroke(strength=-0.1)]}, "greater than or equal to 0"),
    ({"sample": 1, "strokes": [stroke(mode="smudge")]}, "'add', 'remove' or 'erase'"),
    ({"sample": 1, "strokes": [dict(stroke(), layer="layer4")]}, "Extra inputs"),
    ({"sample": -1}, "greater than or equal to 0"),
    ({"sample": 2 ** 31}, "less than or equal to 2147483647"),
    ({"sample": "first"}, "valid integer"),
    ({"strokes": []}, "Field required"),
    ({"sample": 1, "strokes": [stroke()] * (MAX_STROKES + 1)}, "9 strokes; at most 8"),
])
def test_bad_render_requests_are_422_with_a_reason(client, body, fragment):
    response = render_raw(client, json.dumps(body))
    assert response.status_code == 422, response.text
    assert fragment in json.dumps(response.json()["detail"])


def render_raw(client, content, **headers):
    return client.post("/api/render", content=content, headers={"Content-Type": "application/json", **headers})


def test_malformed_json_nan_and_wrong_content_type_are_refused(client):
    assert render_raw(client, '{"sample": 1, "strokes": [').status_code == 422
    nan = json.dumps({"sample": 1, "strokes": [stroke()]}).replace("1.0", "NaN")
    assert render_raw(client, nan).status_code == 422
    text = client.post("/api/render", content=json.dumps({"sample": 1}), headers={"Content-Type": "text/plain"})
    assert text.status_code == 422


def test_oversized_bodies_are_413_declared_or_streamed(client):
    limit = client.get("/api/info").json()["max_request_bytes"]
    big = json.dumps({"sample": 1, "strokes": [], "pad": "x" * limit})
    declared = render_raw(client, big)
    assert declared.status_code == 413 and str(limit) in declared.json()["detail"]
    streamed = render_raw(client, (big[i:i + 4096].encode() for i in range(0, len(big), 4096)))
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert render(client).status_code == 200   # and the server goes on serving


# ---- the paint mode as a real server, and the page in a browser ------------------------------------

def run_main(*args):
    return cli_helpers.run_main(*args, timeout=120)


@pytest.fixture(scope="module")
def painted_dissection(tmp_path_factory, model):
    generator, params = model
    root = tmp_path_factory.mktemp("paint")
    save_model(str(root / "gen"), params, generator.meta({"test": "random weights"}))
    door = ace_file("layer8", "door", CONCEPTS[0].units, CONCEPTS[0].values, 8)
    write_dissection(str(root / "run"), str(root / "gen"), ace=[("door", door)])
    return str(root / "run")


@contextlib.contextmanager
def paint_server(dissection, *flags):
    """main.py --mode=paint on a free port; yields its base URL."""
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"), "--mode=paint",
                                f"--dissection={dissection}", "--port=0", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        output = []
        while not any("open http://" in line for line in output):
            try:
                output.append(lines.get(timeout=90))
            except queue.Empty:
                pytest.fail(f"paint server did not start: {''.join(output)}")
        yield output[-1].split("open ")[1].split()[0].rstrip("/")
    finally:
        process.terminate()
        process.wait(timeout=20)


HEADER_TIMEOUT, MAX_CONNECTIONS = 1.0, 4


@pytest.fixture(scope="module")
def server(painted_dissection):
    with paint_server(painted_dissection, "--paint_units=4", f"--header_timeout={HEADER_TIMEOUT}",
                      f"--max_connections={MAX_CONNECTIONS}") as url:
        yield url


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_paint_mode_serves_the_dissections_concepts(server, painted_dissection):
    concepts = get_json(server + "/api/concepts")
    want = load_concepts(painted_dissection, n_units=4)
    assert [(c["name"], c["layer"], c["n_units"], c["origin"]) for c in concepts] == \
        [(c.name, c.layer, len(c.units), c.origin) for c in want]
    assert get_json(server + "/api/info")["seed"] == SEED   # recorded by the dissection


def status(url, host=None):
    """The HTTP status of GET `url` (with Host header `host` if given)."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_host_guard_answers_only_names_of_the_bound_address(client):
    guarded = TestClient(HostGuard(client.app, allowed_hosts("127.0.0.1")), base_url="http://127.0.0.1:8000")
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"):
        assert guarded.get("/api/info", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "127.0.0.1.evil.example:8000", "localhost.evil.example", "[::2]:8000", ""):
        answer = guarded.get("/api/info", headers={"Host": host})
        assert answer.status_code == 403 and "does not name this server" in answer.json()["detail"], host
    assert allowed_hosts("0.0.0.0") == ("127.0.0.1", "localhost", "[::1]", "0.0.0.0")
    assert allowed_hosts("::") == ("127.0.0.1", "localhost", "[::1]", "[::]")


def test_paint_server_refuses_foreign_hosts_and_drops_idle_connections(server):
    assert status(server + "/api/info") == 200
    assert status(server + "/api/info", host="rebound.example") == 403
    port = int(server.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        assert status(server + "/api/info") == 503            # the cap holds ...
        time.sleep(HEADER_TIMEOUT + 1.0)
        for connection in idle:                                # ... until the header deadline closes them
            connection.settimeout(5)
            assert connection.recv(1) == b""
        assert status(server + "/api/info") == 200
    finally:
        for connection in idle:
            connection.close()


def test_paint_mode_warns_when_bound_beyond_loopback(tmp_path):
    result = run_main("--mode=paint", f"--dissection={tmp_path}", "--host=0.0.0.0", "--port=0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert lines[0].startswith("warning: --host=0.0.0.0 accepts connections from other machines")
    assert lines[1].startswith("error: ") and "no dissect.json" in lines[1]


def test_paint_mode_refusals_are_one_line(tmp_path, painted_dissection):
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    for args, fragment in ((["--mode=paint"], "--dissection is required"),
                           ([f"--dissection={painted_dissection}", f"--port={port}"], f"--port={port}: cannot listen"),
                           ([f"--dissection={tmp_path}"], "no dissect.json"),
                           ([f"--dissection={painted_dissection}", "--paint_layer=layer9"], "layer9"),
                           ([f"--dissection={painted_dissection}", "--max_strokes=0"], "--max_strokes=0"),
                           ([f"--dissection={painted_dissection}", f"--concepts={tmp_path}/tree.json"],
                            f"{tmp_path}/tree.json: no such ace.json")):
        result = run_main("--mode=paint", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert fragment in result.stderr.strip().splitlines()[-1]
        assert "warning" not in result.stderr          # 127.0.0.1, the default --host
    taken.close()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def output_pixels(page):
    return decode_png(page.get_attribute("#output", "src"))


def wait_for_strokes(page, count):
    page.wait_for_function(f"document.querySelector('#output').dataset.strokes === '{count}' && "
                           "document.body.dataset.busy === '0'", timeout=30000)


TOY = os.path.join(REPO, "weights", "toy")
TOY_SAMPLE = 5


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    """The paint mode on a short dissection of the shipped toy models, with the shipped causal concepts
    (weights/toy/concepts: the alpha search's tree and door units of layer4)."""
    if not os.path.isdir(os.path.join(TOY, "generator")):
        pytest.skip("weights/toy/generator is not shipped")
    outdir = str(tmp_path_factory.mktemp("toy_paint") / "run")
    result = run_main("--mode=dissect", f"--generator={TOY}/generator", f"--segmenter={TOY}/segmenter",
                      f"--outdir={outdir}", "--layers=layer4", "--samples=512", "--batch_size=64", "--downsample=2",
                      "--report_images=1")
    assert result.returncode == 0, result.stderr
    concepts = ",".join(os.path.join(TOY, "concepts", name, "ace.json") for name in ("tree", "door"))
    with paint_server(outdir, f"--concepts={concepts}") as url:
        yield url


def tree_pixels(images, where):
    """Pixels the toy segmenter labels tree within `where` (R, R) in each uint8 RGB image."""
    from jaxdissect.segmentation.segmenter import Segmenter
    segmenter, params = Segmenter.from_model_folder(os.path.join(TOY, "segmenter"))
    x = np.stack(images).astype(np.float32) / 127.5 - 1.0
    labels = np.asarray(segmenter.segment(params, x))[:, 0]
    return [int(np.sum((label == segmenter.labels.index("tree")) & where)) for label in labels]


def test_page_paints_the_toy_models_tree_units_and_undoes_it_in_chromium(toy_server, tmp_path):
    """Pick a sample and the tree concept, brush a stroke: trees appear inside it (by the toy
    segmenter), nothing changes beyond the stroke's reach through the generator; undo brings back the
    original exactly."""
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    from playwright import sync_api
    from jaxdissect.models.load import load_generator
    artifacts = os.environ.get("PAINT_ARTIFACTS", str(tmp_path))
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS,
            viewport={"width": 1100, "height": 820})
        try:
            page = context.new_page()
            page.goto(toy_server + "/")
            page.wait_for_selector(f"#strip figure[data-index='{TOY_SAMPLE}']")
            page.click(f"#strip figure[data-index='{TOY_SAMPLE}']")
            page.wait_for_function(f"document.querySelector('#output').dataset.sample === '{TOY_SAMPLE}' && "
                                   "document.body.dataset.busy === '0'")
            original = output_pixels(page)
            page.screenshot(path=os.path.join(artifacts, "paint_before.png"))
            page.click(".concept[data-name='tree']")
            brush = int(page.input_value("#brush"))
            stage = page.locator("#stage").bounding_box()
            scale = stage["width"] / R
            (x0, y0), (x1, y1) = (14, 46), (50, 46)   # image pixels, across the lower half
            page.mouse.move(stage["x"] + x0 * scale, stage["y"] + y0 * scale)
            page.mouse.down()
            page.mouse.move(stage["x"] + x1 * scale, stage["y"] + y1 * scale, steps=12)
            page.mouse.up()
            wait_for_strokes(page, 1)
            painted = output_pixels(page)
            page.screenshot(path=os.path.join(artifacts, "paint.png"))

            changed = (painted != original).any(axis=2)
            rows, cols = np.mgrid[:R, :R] + 0.5
            distance = np.hypot(rows - y0, np.maximum(np.maximum(x0 - cols, cols - x1), 0))
            inside = distance < brush / 2 - 1
            generator, _ = load_generator(os.path.join(TOY, "generator"))
            cell, pixels = reach(generator, "layer4")
            near = distance <= brush / 2 + cell + pixels
            assert changed[inside].mean() > 0.5
            assert not changed[~near].any()
            trees_before, trees_after = tree_pixels([original, painted], inside)
            assert trees_after - trees_before > 0.2 * inside.sum(), (trees_before, trees_after, inside.sum())

            page.click("#undo")
            wait_for_strokes(page, 0)
            np.testing.assert_array_equal(output_pixels(page), original)
            page.click("#redo")
            wait_for_strokes(page, 1)
            np.testing.assert_array_equal(output_pixels(page), painted)
        finally:
            context.close()
