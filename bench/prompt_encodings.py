"""Prompt encodings: a run's encoding time with and without the cache kept next to the teacher pairs.

    COMFYUI_PATH=/path/to/ComfyUI python bench/prompt_encodings.py [--prompts 300] [--out bench/results]

On the test suite's tiny SD1.5 checkpoint (``tests/comfy_host.write_tiny_checkpoint``: a full CLIP-L text
encoder), loaded as CheckpointLoaderSimple loads it, one torch thread: N distinct prompts encoded as
ComfyUI's CLIPTextEncode does with no cache (``encode_prompt`` per prompt), then through
``encode_prompts`` into an empty cache (a first run: encode and store) and again (a rerun or resume:
every encoding read back), and the text encoder's identity alone (``EncodingCache``: the SHA-256 of the
weights its encodings depend on, paid once per run). The restored encodings are checked equal to the uncached ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(work):
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--out", type=Path, help="write prompt_encodings.md/.json here")
    arguments = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_host

    comfy_host.import_host()
    import comfy.sd

    from comfyui_dyweight.host.encodings import EncodingCache, encode_prompt, encode_prompts

    texts = [f"photo number {index} of a cat, {'detailed ' * (index % 5)}studio light"
             for index in range(arguments.prompts)]
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        name = comfy_host.write_tiny_checkpoint(folder)
        clip = comfy.sd.load_checkpoint_guess_config(str(Path(folder) / "checkpoints" / name), output_vae=False)[1]
        plain, plain_s = timed(lambda: [encode_prompt(clip, text) for text in texts])
        cache = Path(folder) / "cache"
        _, first_s = timed(lambda: encode_prompts(clip, texts, cache))
        again, again_s = timed(lambda: encode_prompts(clip, texts, cache))
        _, identity_s = timed(lambda: EncodingCache(clip, cache / "encodings"))
        stored_mib = sum(path.stat().st_size for path in (cache / "encodings").iterdir()) / 2 ** 20
    assert again.reused == len(texts)
    assert all(torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1]["pooled_output"], b[0][1]["pooled_output"])
               for a, b in zip(again.conditionings, plain))
    rows = {"no cache (CLIPTextEncode per prompt)": plain_s, "first run (encode and store)": first_s,
            "rerun / resume (all read back)": again_s,
            "of which the encoder's identity (SHA-256 of the weights read)": identity_s}
    table = (f"{len(texts)} prompts, tiny SD1.5 checkpoint (CLIP-L), one torch thread; cache {stored_mib:.1f} MiB\n\n"
             "| run | seconds | ms per prompt |\n|---|---:|---:|\n"
             + "".join(f"| {label} | {seconds:.2f} | {1000 * seconds / len(texts):.1f} |\n"
                       for label, seconds in rows.items())
             + f"\nrerun / no cache: {again_s / plain_s:.3f}×\n")
    print(table, end="")
    if arguments.out is not None:
        arguments.out.mkdir(parents=True, exist_ok=True)
        (arguments.out / "prompt_encodings.md").write_text(f"# Prompt encodings\n\n{table}", encoding="utf-8")
        (arguments.out / "prompt_encodings.json").write_text(
            json.dumps({"prompts": len(texts), "seconds": rows, "cache_mib": stored_mib}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
