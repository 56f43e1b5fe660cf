"""--mode=paint: GAN Paint, a local web page to paint concepts onto generated images.

    python main.py --mode=paint --flagfile=configs/toy.cfg      # paints with the toy dissection
    python main.py --mode=paint --dissection=runs/toy --port=8080

Concepts come from the dissection folder (see jaxdissect.paint.concepts);
the generator and seed default to the ones the dissection ran with, so
sample i on the page is sample i of its report. Needs the `paint` extra
(pip install -e '.[paint]'). The server answers only requests addressed to
it by name (see jaxdissect.paint.guard) and warns when bound beyond this
machine.
"""
import socket
import sys

from absl import flags

from jaxdissect.cli import register
from jaxdissect.cli.common import FLAGS, dissection_dir
from jaxdissect.cli.dissect import load_generator_flag, recorded_flag
from jaxdissect.errors import UserError

flags.DEFINE_string("paint_layer", None, "paint: layer of the concepts taken from the dissection's IoU "
                    "ranking (default: its first dissected layer); ace/*/ace.json concepts keep their own.")
flags.DEFINE_list("concepts", [], "paint: ace.json files of causal concepts to offer besides the dissection's "
                  "own (e.g. weights/toy/concepts/tree/ace.json); they win over same-named ones.")
flags.DEFINE_integer("paint_units", 20, "paint: units per concept taken from the IoU ranking (the paper: 20).")
flags.DEFINE_integer("max_strokes", 64, "paint: most strokes one render takes (more is refused; the renderer "
                     "is compiled for exactly this many).")
flags.DEFINE_string("host", "127.0.0.1", "paint: address to listen on (127.0.0.1: this machine only).")
flags.DEFINE_integer("port", 8000, "paint: port to listen on (0: any free port).")
flags.DEFINE_integer("max_connections", 64, "paint: concurrent connections before the server answers 503.")
flags.DEFINE_float("header_timeout", 10.0, "paint: seconds a connection has to send a request's headers "
                   "before it is closed (idle connections would otherwise hold --max_connections).")


@register("paint", "GAN Paint: a local web page to paint concepts onto generated images.")
def run_paint():
    try:
        import uvicorn

        from jaxdissect.paint import guard
        from jaxdissect.paint.server import create_app
    except ImportError as e:
        raise UserError(f"--mode=paint needs the 'paint' extra: pip install -e '.[paint]' ({e})") from None
    from jaxdissect.paint.concepts import load_concepts
    outdir = dissection_dir()
    checks = [("paint_units", FLAGS.paint_units >= 1), ("max_strokes", FLAGS.max_strokes >= 1),
              ("port", 0 <= FLAGS.port <= 65535), ("max_connections", FLAGS.max_connections >= 1),
              ("header_timeout", FLAGS.header_timeout > 0)]
    for name, ok in checks:
        if not ok:
            raise UserError(f"--{name}={FLAGS[name].value}: out of range")
    listener = listen(FLAGS.host, FLAGS.port)  # before the slow part, so a taken port fails at once
    if not guard.is_loopback(FLAGS.host):
        print(f"warning: --host={FLAGS.host} accepts connections from other machines: anyone who can reach "
              "this one can use the page and its compute (there is no login)", file=sys.stderr, flush=True)
    concepts = load_concepts(outdir, FLAGS.paint_layer, FLAGS.paint_units, FLAGS.concepts)
    if not FLAGS["generator"].present:
        FLAGS.generator = recorded_flag(outdir, "generator")
    generator, params = load_generator_flag()
    app = guard.HostGuard(create_app(generator, params, concepts, dissection_seed(outdir), FLAGS.max_strokes),
                          guard.allowed_hosts(FLAGS.host))
    port = listener.getsockname()[1]
    host = f"[{FLAGS.host}]" if ":" in FLAGS.host else FLAGS.host
    print(f"GAN Paint: {len(concepts)} concepts; open http://{host}:{port}/ (Ctrl+C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", limit_concurrency=FLAGS.max_connections,
                            timeout_keep_alive=5, http=guard.header_deadline_protocol(FLAGS.header_timeout))
    uvicorn.Server(config).run(sockets=[listener])


def dissection_seed(outdir):
    """--seed if given, else the seed the dissection ran with (if it recorded one), else --seed's default."""
    if FLAGS["seed"].present:
        return FLAGS.seed
    try:
        return int(recorded_flag(outdir, "seed"))
    except UserError:
        return FLAGS.seed


def listen(host, port):
    """A listening socket on (host, port); UserError if the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise UserError(f"--host={host} --port={port}: cannot listen there ({e.strerror or e})") from None
