"""The GAN Paint web app: a JSON API (OpenAPI schema at /openapi.json) and the page that uses it.

The server is stateless: the page keeps the list of strokes (so undo, redo
and reset happen in the browser) and sends the whole list with every render.
Images travel as PNG data URLs (`data:image/png;base64,...`); brush masks as
packed bitmaps at image resolution (see jaxdissect.paint.masks).

Every bad request is a 4xx with a one-line `detail`: unknown concepts or
layers, sample indices out of range, masks of the wrong size or encoding,
too many strokes, strengths outside [0, 1], bodies over the size limit.
Nothing a client sends is used as a file path: the page's three files are
read once from the package.
"""
import base64
import io
import os
from typing import List, Literal, Optional

from fastapi import FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from jaxdissect.paint.masks import decode_mask, packed_length
from jaxdissect.paint.painter import Painter, Stroke

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
              "/style.css": ("style.css", "text/css")}
MAX_SAMPLE = 2 ** 31 - 1
MAX_SAMPLES_PER_REQUEST = 32
MASK_FORMAT = ("base64 of the R x R brush mask (R = resolution), row-major, 8 pixels a byte, most "
               "significant bit first (numpy.packbits); 1 = painted")


class Info(BaseModel):
    resolution: int = Field(description="Images are resolution x resolution pixels; so are masks.")
    max_strokes: int = Field(description="A render takes at most this many strokes.")
    seed: int = Field(description="Sample i is generated from the latent drawn for (seed, i).")
    layers: List[str] = Field(description="Layers that concepts edit.")
    mask_format: str
    mask_length: int = Field(description="Characters of one stroke's base64 mask.")
    max_request_bytes: int


class ConceptInfo(BaseModel):
    name: str
    layer: str
    n_units: int
    origin: Literal["ace", "dissection"] = Field(
        description="ace: causal units found by --mode=ace; dissection: top units by IoU.")


class Sample(BaseModel):
    index: int
    image: str = Field(description="data:image/png;base64,... of the unedited sample.")


class SampleList(BaseModel):
    samples: List[Sample]


class StrokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["add", "remove", "erase"] = Field(
        description="add: switch the concept's units on; remove: switch them off; erase: undo all "
                    "earlier paint inside the mask.")
    concept: Optional[str] = Field(None, max_length=200,
                                   description="Concept name from /api/concepts; required unless mode=erase.")
    strength: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False,
                            description="Scales how far the units are pulled (alpha).")
    mask: str = Field(description=MASK_FORMAT)


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample: int = Field(ge=0, le=MAX_SAMPLE, description="Sample index.")
    strokes: List[StrokeRequest] = Field(default_factory=list, description="Applied in order.")


class Rendered(BaseModel):
    sample: int
    strokes: int
    image: str = Field(description="data:image/png;base64,... of the edited sample.")


def create_app(generator, params, concepts, seed=1, max_strokes=64):
    """The FastAPI app painting `concepts` (jaxdissect.paint.concepts.Concept) onto `generator`'s samples.

    Compiles the renderer once before returning. `app.state.painter` is the
    jaxdissect.paint.painter.Painter behind it.
    """
    painter = Painter(generator, params, concepts, seed, max_strokes)
    painter.render(0)  # compile now, not on the first click
    resolution = painter.resolution
    mask_length = packed_length(resolution)
    max_request_bytes = max_strokes * (mask_length + 512) + 16384
    names = {c.name: i for i, c in enumerate(painter.concepts)}
    pages = {route: _read_static(name) for route, (name, _) in PAGE_FILES.items()}

    app = FastAPI(title="GAN Paint", version="1", docs_url=None, redoc_url=None,  # those pages need a CDN
                  description=__doc__)
    app.state.painter = painter
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)

    for route, (_, media_type) in PAGE_FILES.items():
        app.add_api_route(route, _page_handler(pages[route], media_type), methods=["GET"],
                          include_in_schema=False)

    @app.get("/api/info", response_model=Info)
    def info():
        """Image size, limits and the mask format."""
        return Info(resolution=resolution, max_strokes=max_strokes, seed=seed, layers=list(painter.layers),
                    mask_format=MASK_FORMAT, mask_length=mask_length, max_request_bytes=max_request_bytes)

    @app.get("/api/concepts", response_model=List[ConceptInfo])
    def list_concepts(layer: Optional[str] = Query(None, max_length=200,
                                                   description="Only concepts of this layer.")):
        """The paintable concepts."""
        if layer is not None and layer not in generator.layer_names:
            raise HTTPException(422, f"unknown layer {layer!r}; layers: {', '.join(generator.layer_names)}")
        return [ConceptInfo(name=c.name, layer=c.layer, n_units=len(c.units), origin=c.origin)
                for c in painter.concepts if layer in (None, c.layer)]

    @app.get("/api/samples", response_model=SampleList)
    def list_samples(start: int = Query(0, ge=0, le=MAX_SAMPLE), count: int = Query(8, ge=1,
                                                                                   le=MAX_SAMPLES_PER_REQUEST)):
        """Unedited samples start, ..., start + count - 1 (ask for a random start for new ones)."""
        if start + count - 1 > MAX_SAMPLE:
            raise HTTPException(422, f"samples end at index {MAX_SAMPLE}")
        return SampleList(samples=[Sample(index=i, image=png_data_url(painter.render(i)))
                                   for i in range(start, start + count)])

    @app.post("/api/render", response_model=Rendered)
    def render(request: RenderRequest):
        """The sample with the strokes applied in order."""
        if len(request.strokes) > max_strokes:
            raise HTTPException(422, f"{len(request.strokes)} strokes; at most {max_strokes} "
                                     "(reset or undo some)")
        strokes = [_stroke(k, s, names, resolution) for k, s in enumerate(request.strokes)]
        image = painter.render(request.sample, strokes)
        return Rendered(sample=request.sample, strokes=len(strokes), image=png_data_url(image))

    return app


async def validation_error(request, error):
    """422 listing where and why, without echoing the input (it may not even be JSON, e.g. NaN)."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _stroke(k, stroke, names, resolution):
    """A validated painter Stroke from the request's stroke number k."""
    concept = 0
    if stroke.mode != "erase":
        if stroke.concept is None:
            raise HTTPException(422, f"strokes[{k}]: mode {stroke.mode!r} needs a concept")
        if stroke.concept not in names:
            known = ", ".join(sorted(names))
            raise HTTPException(422, f"strokes[{k}]: unknown concept {stroke.concept!r}; known: {known}")
        concept = names[stroke.concept]
    try:
        mask = decode_mask(stroke.mask, resolution)
    except ValueError as e:
        raise HTTPException(422, f"strokes[{k}]: {e}") from None
    return Stroke(concept, stroke.mode, stroke.strength, mask)


def png_data_url(image):
    """uint8 (H, W, 3) -> data:image/png;base64,..."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_static(name):
    with open(os.path.join(STATIC, name), "rb") as f:
        return f.read()


def _page_handler(content, media_type):
    def handler():
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
    return handler


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, declared or streamed."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())
            return message
        await self.app(scope, limited_receive, send)

    def _message(self):
        return f"request body over {self.max_bytes} bytes"

    async def _reject(self, scope, receive, send):
        await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
