"""Bad input, through the real CLI in a subprocess: each case is one line on stderr naming what was wrong, exit
status 2, no traceback, and nothing left behind (no file in the working folder or the run directory, so no
MLflow run either). Cases of the field's usual mistakes. The cases run three at a time."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

def png_header(path, width, height):
    """A PNG whose header claims width x height (no pixel data): Pillow reads the size on open."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))

def photo(path, size=(48, 48)):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)

GENOTYPE = {"version": 1, "task": "car", "scale": 1, "in_channels": 3, "channels": 8, "blocks": 4, "stages": 2}

def genotype(**change):
    def setup(work):
        (work / "g.json").write_text(json.dumps({**GENOTYPE, **change}))
    return setup

def nested(work):
    (work / "g.json").write_text("[" * 100000 + "]" * 100000)

def text_file(name, content):
    def setup(work):
        (work / name).write_text(content)
    return setup

def bomb(work):
    png_header(work / "big.png", 40000, 40000)
    photo(work / "clean.png")

def big_compare(work):
    png_header(work / "a.png", 11000, 11000)
    png_header(work / "b.png", 11000, 11000)

def data_dir(kind):
    def setup(work):
        folder = work / "photos"
        folder.mkdir()
        for i in range(3):
            photo(folder / f"p{i}.png", (96, 96))
        if kind == "corrupt":
            (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        elif kind == "small":
            photo(folder / "tiny.png", (8, 8))
        elif kind == "few":  # one image, one 16x16 patch: the smoke profile draws 2 per batch
            for i in range(3):
                (folder / f"p{i}.png").unlink()
            photo(folder / "one.png", (20, 20))
    return setup

def empty_dir(work):
    (work / "photos").mkdir()

def corrupt_db(work):
    home = work / "home"
    home.mkdir()
    (home / "mlflow.db").write_bytes(b"this is not sqlite" * 100)

def home_is_file(work):
    (work / "home").write_text("a file")
    (work / "g.json").write_text(json.dumps(GENOTYPE))

def checkpoint_garbage(work):
    (work / "ckpt.pt").write_bytes(b"garbage" * 10)
    (work / "g.json").write_text(json.dumps(GENOTYPE))

def nothing(work):
    pass

def car_model(*images):
    """A checkpoint of an untrained car q10 network (cheap: built, never trained) and the named images:
    'in.png' a 48x48 photo, 'tiny.png' 4x4, 'big.png' a 40000x40000 header, 'photos/' an empty folder; and an empty
    'restored/' for the outputs."""
    def setup(work):
        (work / "restored").mkdir()
        from search_space.backbone import build_network
        from search_space.genotype import Genotype
        from workers.checkpoint import save_checkpoint
        from workers.tasks import task_from_options
        genotype = Genotype.from_dict(GENOTYPE)
        save_checkpoint(work / "model.pt", model=build_network(genotype), genotype=genotype,
                        task=task_from_options("car"), profile="smoke", step=0)
        for name in images:
            if name == "photos/":
                (work / "photos").mkdir()
            elif name == "big.png":
                png_header(work / name, 40000, 40000)
            else:
                photo(work / name, (4, 4) if name == "tiny.png" else (48, 48))
    return setup

S = ["search", "--task", "car", "--profile", "smoke"]
SHARED_DATASETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets")

CASES = [
    ("no verb", [], nothing, "required: verb (see 'acla-orch --help')"),
    ("unknown verb", ["frobnicate"], nothing, "invalid choice"),
    ("budget words", S + ["--budget", "fifty"], nothing, "(see 'acla-orch search --help')"),
    ("budget negative", S + ["--budget=-5G"], nothing, "budget"),
    ("width seeds without the width line", S + ["--budget", "50G", "--no-width", "--width-seeds", "3"], nothing,
     "which --no-width turns off"),
    ("width seeds zero", S + ["--budget", "50G", "--width-seeds", "0"], nothing, "--width-seeds"),
    ("budget zero", S + ["--budget", "0"], nothing, "budget"),
    ("budget nan", S + ["--budget", "nan"], nothing, "budget"),
    ("budget inf", S + ["--budget", "inf"], nothing, "budget"),
    ("budget too small", S + ["--budget", "1M"], nothing, "smallest"),
    ("task unknown", ["search", "--task", "deblur", "--budget", "5G"], nothing, "invalid choice"),
    ("scale 5", ["search", "--task", "sr", "--scale", "5", "--budget", "5G"], nothing, "invalid choice"),
    ("quality 15", S + ["--budget", "5G", "--quality", "15"], nothing, "invalid choice"),
    ("sigma 30", ["search", "--task", "denoise", "--sigma", "30", "--budget", "5G"], nothing, "invalid choice"),
    ("profile unknown", ["search", "--task", "car", "--profile", "huge", "--budget", "5G"], nothing, "profile"),
    ("trials 0", S + ["--budget", "5G", "--trials", "0"], nothing, "trials"),
    ("concurrency 0", S + ["--budget", "5G", "--concurrency", "0"], nothing, "concurrency"),
    ("retrain-top 0", S + ["--budget", "5G", "--retrain-top", "0"], nothing, "1 or more"),
    ("retrain-workers 0", S + ["--budget", "5G", "--retrain-workers", "0"], nothing, "retrain-workers"),
    ("search-steps 0", S + ["--budget", "5G", "--search-steps", "0"], nothing, "search-steps"),
    ("warmup >= steps", S + ["--budget", "5G", "--search-steps", "3", "--search-warmup", "3"], nothing, "warmup"),
    ("seed -1", S + ["--budget", "5G", "--seed", "-1"], nothing, "seed"),
    ("seed huge", S + ["--budget", "5G", "--seed", "99999999999999999999"], nothing, "seed"),
    ("tracking mysql no driver", S + ["--budget", "5G", "--tracking-uri", "mysql://u@127.0.0.1:9/db"], nothing, "pip install mysqlclient"),
    ("tracking postgres unreachable", S + ["--budget", "5G", "--tracking-uri", "postgresql://u:secret@127.0.0.1:9/db"], nothing, "not reachable"),
    ("tracking unreachable", S + ["--budget", "5G", "--tracking-uri", "http://127.0.0.1:9"], nothing, "not reachable"),
    ("tracking scheme", S + ["--budget", "5G", "--tracking-uri", "ftp://x"], nothing, "tracking"),
    ("s3 endpoint not a url", S + ["--budget", "5G", "--artifact-root", "s3://bucket/x", "--s3-endpoint", "notaurl"], nothing, "endpoint"),
    ("s3 root without bucket", S + ["--budget", "5G", "--artifact-root", "s3://"], nothing, "bucket"),
    ("ray port out of range", S + ["--budget", "5G", "--address", "127.0.0.1:99999"], nothing, "address"),
    ("ray unreachable", S + ["--budget", "5G", "--address", "127.0.0.1:9"], nothing, "not reachable"),
    ("data missing", S + ["--budget", "5G", "--data", "nowhere"], nothing, "nowhere"),
    ("data empty", S + ["--budget", "5G", "--data", "photos"], empty_dir, "photos"),
    ("data corrupt image", S + ["--budget", "5G", "--data", "photos"], data_dir("corrupt"), "broken.png"),
    ("data too small image", S + ["--budget", "5G", "--data", "photos"], data_dir("small"), "tiny.png"),
    ("data too few patches", S + ["--budget", "5G", "--data", "photos"], data_dir("few"), "hold only 1 non-overlapping 16x16"),
    ("retrain workers above the batch", S + ["--budget", "5G", "--retrain-workers", "3"], nothing, "exceeds the smoke profile's batch of 2"),
    ("genotype missing", ["cost", "--task", "car", "--genotype", "missing.json"], nothing, "missing.json"),
    ("genotype not json", ["cost", "--task", "car", "--genotype", "g.json"], text_file("g.json", "{not json"), "g.json"),
    ("genotype array", ["cost", "--task", "car", "--genotype", "g.json"], text_file("g.json", "[1, 2]"), "g.json"),
    ("genotype nested", ["cost", "--task", "car", "--genotype", "g.json"], nested, "g.json"),
    ("genotype unknown field", ["cost", "--task", "car", "--genotype", "g.json"], genotype(colour=1), "unknown field"),
    ("genotype channels 1e6", ["cost", "--task", "car", "--genotype", "g.json"], genotype(channels=1000000), "channels"),
    ("genotype blocks 1e8", ["cost", "--task", "car", "--genotype", "g.json"], genotype(blocks=100000000), "blocks"),
    ("genotype max_keys 1e7", ["cost", "--task", "car", "--genotype", "g.json"], genotype(max_keys=10000000), "max_keys"),
    ("genotype scale float", ["cost", "--task", "car", "--genotype", "g.json"], genotype(scale=2.0), "scale"),
    ("genotype positions", ["cost", "--task", "car", "--genotype", "g.json"], genotype(positions=[99]), "out of range"),
    ("decompression bomb degrade", ["degrade", "--task", "car", "big.png", "out.png"], bomb, "big.png"),
    ("decompression bomb compare", ["compare", "clean.png", "big.png", "--task", "car"], bomb, "big.png"),
    ("compare 11000 square", ["compare", "a.png", "b.png", "--task", "car"], big_compare, "a.png"),
    ("degrade missing input", ["degrade", "--task", "car", "nope.png", "out.png"], nothing, "nope.png"),
    ("degrade output folder missing", ["degrade", "--task", "car", "clean.png", "no/such/out.png"], lambda w: photo(w / "clean.png"), "no/such"),
    ("status corrupt db", ["status"], corrupt_db, "mlflow.db"),
    ("train home is a file", ["train", "--genotype", "g.json", "--task", "car", "--profile", "smoke"], home_is_file, "home"),
    ("train steps 0", ["train", "--genotype", "g.json", "--task", "car", "--profile", "smoke", "--steps", "0"], genotype(), "steps"),
    ("train steps -5", ["train", "--genotype", "g.json", "--task", "car", "--profile", "smoke", "--steps", "-5"], genotype(), "steps"),
    ("train resume garbage", ["train", "--genotype", "g.json", "--task", "car", "--profile", "smoke", "--resume", "ckpt.pt"], checkpoint_garbage, "ckpt.pt"),
    ("evaluate missing ckpt", ["evaluate", "--model", "nope.pt", "--benchmark", "Set5"], nothing, "unknown model reference 'nope.pt'"),
    ("evaluate garbage ckpt", ["evaluate", "--model", "ckpt.pt", "--benchmark", "Set5", "--datasets", SHARED_DATASETS], checkpoint_garbage, "ckpt.pt"),
    ("evaluate test sets not there", ["evaluate", "--model", "model.pt", "--benchmark", "Set5", "--datasets", "nowhere"], car_model(), "no Set5 test set in"),
    ("evaluate unknown benchmark", ["evaluate", "--model", "ckpt.pt", "--benchmark", "Set7"], checkpoint_garbage, "Set7"),
    ("evaluate empty data folder", ["evaluate", "--model", "model.pt", "--data", "photos"], car_model("photos/"), "no images found"),
    ("restore unknown model", ["restore", "--model", "nope.pt", "in.png", "-o", "restored"], car_model("in.png"), "unknown model reference"),
    ("restore unknown registry model", ["restore", "--model", "models:/acla-car-q10@budget-50G", "in.png", "-o", "restored"], car_model("in.png"), "no MLflow store"),
    ("restore malformed reference", ["restore", "--model", "models:/a/b/c", "in.png", "-o", "restored"], car_model("in.png"), "unknown model reference"),
    ("restore model for another task", ["restore", "--model", "model.pt", "--task", "sr", "in.png", "-o", "restored"], car_model("in.png"), "trained for car-q10, not sr-x2"),
    ("restore model for another quality", ["restore", "--model", "model.pt", "--task", "car", "--quality", "40", "in.png", "-o", "restored"], car_model("in.png"), "not car-q40"),
    ("restore output folder missing", ["restore", "--model", "model.pt", "in.png", "-o", "no/such"], car_model("in.png"), "does not exist"),
    ("restore image over the pixel limit", ["restore", "--model", "model.pt", "big.png", "-o", "restored"], car_model("big.png"), "ACLA_MAX_PIXELS"),
    ("restore into the input's folder", ["restore", "--model", "nope.pt", "in.png", "-o", "."], car_model("in.png"), "would replace the input itself"),
    ("restore image too small", ["restore", "--model", "model.pt", "in.png", "tiny.png", "-o", "restored"], car_model("in.png", "tiny.png"), "at least 8x8"),
    ("restore missing input", ["restore", "--model", "model.pt", "in.png", "gone.png", "-o", "restored"], car_model("in.png"), "gone.png"),
    ("retrain without a store", ["retrain", "--run-id", "0123456789abcdef0123456789abcdef"], nothing, "no MLflow store"),
    ("retrain run id injection", ["retrain", "--run-id", "x' or '1'='1"], nothing, "not an MLflow run id"),
    ("resume run id not hex", ["resume", "../../etc"], nothing, "not an MLflow run id"),
    ("resume nothing to resume", ["resume", "--last"], nothing, "no interrupted search"),
    ("resume both id and last", ["resume", "0123456789abcdef0123456789abcdef", "--last"], nothing, "--last"),
    ("sweep duplicate budgets", ["sweep", "--budgets", "2G,3G,2000M", "--task", "car", "--profile", "smoke"], nothing, "budget 2.00GMACs is given more than once"),
    ("sweep fine-tune steps 0", ["sweep", "--budgets", "2G,3G", "--task", "car", "--profile", "smoke", "--finetune-steps", "0"], nothing, "--finetune-steps"),
    ("sweep too many budgets", ["sweep", "--budgets", ",".join(f"{b}G" for b in range(1, 10)), "--task", "car", "--profile", "smoke"], nothing, "a sweep takes at most 8"),
    ("ablate unknown variant", ["ablate", "--task", "car", "--budget", "5G", "--profile", "smoke", "--variants", "bogus"], nothing, "bogus"),
    ("ablate seeds 0", ["ablate", "--task", "car", "--budget", "5G", "--profile", "smoke", "--seeds", "0"], nothing, "seeds"),
    ("pareto unreachable tracking", ["pareto", "--task", "car", "--tracking-uri", "http://127.0.0.1:9"], nothing, "not reachable"),
    ("pareto plot folder missing", ["pareto", "--task", "car", "--plot", "no/such/front.png"], nothing, "no/such"),
    ("retrain data folder missing", ["retrain", "--run-id", "0123456789abcdef0123456789abcdef", "--data", "nowhere"], nothing, "nowhere"),
]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def case_env(work: Path) -> dict:
    """A case's environment: its own run directory, and none of the user's settings that would point elsewhere."""
    env = {**os.environ, "ACLA_HOME": str(work / "home"), "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ROOT}
    for variable in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AWS_ENDPOINT_URL", "ACLA_MAX_PIXELS"):
        env.pop(variable, None)
    return env


def run_case(case, folder: Path) -> dict:
    _, argv, setup, _ = case
    work = folder / f"case-{CASES.index(case)}"
    work.mkdir()
    setup(work)
    before = set(work.rglob("*"))
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=work, env=case_env(work),
                         capture_output=True, text=True, timeout=300)
    return {"returncode": out.returncode, "stderr": out.stderr,
            "left": sorted(str(p.relative_to(work)) for p in set(work.rglob("*")) - before)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input")
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: run_case(case, folder), CASES))
    return {case[0]: result for case, result in zip(CASES, results)}


def test_at_least_forty_cases():
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name,fragment", [(case[0], case[3]) for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(outcomes, name, fragment):
    outcome = outcomes[name]
    lines = outcome["stderr"].strip().splitlines()
    assert outcome["returncode"] == 2, outcome["stderr"][-2000:]
    assert len(lines) == 1 and lines[0].startswith("acla-orch: error: "), outcome["stderr"][-2000:]
    assert "Traceback" not in outcome["stderr"]
    assert fragment.lower() in lines[0].lower()
    assert outcome["left"] == []


LIGHT_CASES = ["budget too small", "data corrupt image", "retrain workers above the batch", "tracking unreachable",
               "genotype unknown field", "degrade missing input", "restore missing input", "restore into the input's folder",
               "retrain without a store", "resume nothing to resume", "status corrupt db", "pareto unreachable tracking", "train home is a file",
               "evaluate test sets not there", "pareto plot folder missing", "retrain data folder missing"]


def test_bad_input_is_answered_before_torch_mlflow_or_ray_is_imported(tmp_path):
    """Each of these mistakes is told in about a quarter of a second: the CLI checks what it was given before it
    imports torch, MLflow or Ray (seconds each). The modules loaded when the error is printed are looked at."""
    probe = ("import sys\nfrom orchestrator.cli.main import main\ncode = main(sys.argv[1:])\n"
             "print(sorted({'torch', 'mlflow', 'ray'} & {name.split('.')[0] for name in sys.modules}))\n"
             "raise SystemExit(code)\n")
    for name in LIGHT_CASES:
        case = next(case for case in CASES if case[0] == name)
        work = tmp_path / f"light-{CASES.index(case)}"
        work.mkdir()
        case[2](work)
        out = subprocess.run([sys.executable, "-c", probe, *case[1]], cwd=work, env=case_env(work),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and case[3].lower() in out.stderr.lower(), (name, out.stderr[-1000:])
        assert out.stdout.strip() == "[]", (name, out.stdout)
