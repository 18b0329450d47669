"""Prompt encodings cached next to the teacher pairs (``host/encodings.py``), on the real tiny SD1.5
checkpoint's text encoder (a full CLIP-L) as CheckpointLoaderSimple loads it.

The oracle is the stock CLIPTextEncode node on the same CLIP; the encoder calls are counted at the
text encoder itself (``encode_token_weights``, which every CLIP encode path ends in).
"""

import math

import pytest
import torch

import comfy_host

PROMPTS = ["", "a photo of a cat", "a watercolour landscape", "(a red cube:1.3), studio light"]


@pytest.fixture(scope="module")
def checkpoint(host, tmp_path_factory):
    folder = tmp_path_factory.mktemp("encodings_ckpt")
    return folder / "checkpoints" / comfy_host.write_tiny_checkpoint(folder)


def load_clip(checkpoint):
    """The checkpoint's CLIP as CheckpointLoaderSimple loads it (what a new process or a new graph gets)."""
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=True)[1]


@pytest.fixture(scope="module")
def clip(checkpoint):
    return load_clip(checkpoint)


@pytest.fixture
def calls(clip, monkeypatch):
    """The number of text-encoder runs so far (``calls[0]``)."""
    return counted_encodes(clip, monkeypatch)


def counted_encodes(clip, monkeypatch) -> list:
    counted, encode = [0], clip.cond_stage_model.encode_token_weights

    def counting(tokens):
        counted[0] += 1
        return encode(tokens)

    monkeypatch.setattr(clip.cond_stage_model, "encode_token_weights", counting)
    return counted


def stock(clip, texts):
    import nodes

    with torch.inference_mode():
        return [nodes.CLIPTextEncode().encode(clip, text)[0] for text in texts]


def encoded(clip, texts, cache_dir):
    from comfyui_dyweight.host.encodings import encode_prompts

    with torch.inference_mode():  # as ComfyUI runs the nodes and the command its loaders
        return encode_prompts(clip, texts, cache_dir)


def assert_same(ours, reference):
    """Equal CONDITIONINGs: same entries, tensors torch.equal with the same dtype and device, same values."""
    assert len(ours) == len(reference)
    for conditioning, expected in zip(ours, reference):
        assert type(conditioning) is list and len(conditioning) == len(expected)
        for (tensor, extras), (expected_tensor, expected_extras) in zip(conditioning, expected):
            assert tensor.dtype == expected_tensor.dtype and tensor.device == expected_tensor.device
            assert torch.equal(tensor, expected_tensor)
            assert extras.keys() == expected_extras.keys()
            for name, value in extras.items():
                if isinstance(value, torch.Tensor):
                    assert value.dtype == expected_extras[name].dtype and torch.equal(value, expected_extras[name])
                else:
                    assert type(value) is type(expected_extras[name]) and value == expected_extras[name]


def test_a_rerun_encodes_nothing_and_restores_the_fresh_encodings_exactly(clip, calls, tmp_path):
    reference = stock(clip, PROMPTS)
    calls[0] = 0

    first = encoded(clip, PROMPTS, tmp_path)
    assert (calls[0], first.reused) == (len(PROMPTS), 0)
    assert len(list((tmp_path / "encodings").glob("*.safetensors"))) == len(PROMPTS)
    assert_same(first.conditionings, reference)

    again = encoded(clip, PROMPTS, tmp_path)
    assert (calls[0], again.reused) == (len(PROMPTS), len(PROMPTS))  # not one encoder run
    assert_same(again.conditionings, reference)
    assert not list(tmp_path.rglob("*.partial"))

    changed = PROMPTS[:-1] + ["a blue sphere"]
    third = encoded(clip, changed, tmp_path)
    assert (calls[0] - len(PROMPTS), third.reused) == (1, len(PROMPTS) - 1)  # only the new prompt
    assert_same(third.conditionings, stock(clip, changed))

    calls[0] = 0
    assert_same(encoded(clip, PROMPTS, None).conditionings, reference)  # no cache folder: always encoded
    assert calls[0] == len(PROMPTS)


def test_the_same_checkpoint_loaded_again_is_the_same_encoder(host, checkpoint, clip, tmp_path, monkeypatch):
    """A new load (a rerun's) is the same encoder. SD1.5 checkpoints lack the CLIP-L text projection: the
    current host leaves it uninitialised (random here) and drops its output, so the encodings do not
    depend on it and the reload hits; the 2024 host sets it to the identity and pools through it, so
    with another projection the encodings change and must be made again. Either way the cache gives
    exactly what a fresh encoding gives."""
    reference = stock(clip, PROMPTS)
    encoded(clip, PROMPTS, tmp_path)
    again = load_clip(checkpoint)
    projection = next(tensor for name, tensor in again.patcher.model.state_dict().items()
                      if name.endswith("text_projection.weight"))
    with torch.inference_mode():  # whatever the uninitialised memory held
        projection.copy_(torch.randn(projection.shape, generator=torch.Generator().manual_seed(1)))
    fresh = stock(again, PROMPTS)
    try:
        assert_same(fresh, reference)
        depends = False
    except AssertionError:
        depends = True
    assert not (depends and host.is_modern)  # on the current host the reload must hit
    counted = counted_encodes(again, monkeypatch)
    result = encoded(again, PROMPTS, tmp_path)
    assert (counted[0], result.reused) == ((len(PROMPTS), 0) if depends else (0, len(PROMPTS)))
    assert_same(result.conditionings, fresh)


def test_a_changed_text_encoder_re_encodes(clip, calls, tmp_path):
    """CLIPSetLastLayer's layer, or a patch of one weight (as a LoRA adds), is another encoder; the
    original, encoded again afterwards (its weights patched in place by the clone meanwhile), hits."""
    original = stock(clip, PROMPTS)
    encoded(clip, PROMPTS, tmp_path)

    skip = clip.clone()
    skip.clip_layer(-2)
    patched = clip.clone()
    weights = patched.patcher.model.state_dict()
    name = next(key for key in weights if key.endswith("layers.0.mlp.fc1.weight"))
    generator = torch.Generator().manual_seed(0)
    patched.add_patches({name: (0.05 * torch.randn(weights[name].shape, generator=generator),)}, 1.0)
    for changed in (skip, patched):
        calls[0] = 0
        result = encoded(changed, PROMPTS, tmp_path)
        assert (calls[0], result.reused) == (len(PROMPTS), 0)
        fresh = stock(changed, PROMPTS)
        assert_same(result.conditionings, fresh)
        assert not torch.equal(fresh[1][0][0], original[1][0][0])
        assert_same(encoded(changed, PROMPTS, tmp_path).conditionings, fresh)

    calls[0] = 0
    back = encoded(clip, PROMPTS, tmp_path)
    assert (calls[0], back.reused) == (0, len(PROMPTS))
    assert_same(back.conditionings, original)


def test_a_damaged_cache_file_is_reported_and_made_again(clip, calls, tmp_path, caplog):
    reference = stock(clip, PROMPTS)
    encoded(clip, PROMPTS, tmp_path)
    files = sorted((tmp_path / "encodings").glob("*.safetensors"))
    truncated, garbage, other, _ = files
    truncated.write_bytes(truncated.read_bytes()[:1000])
    garbage.write_bytes(b"\x00" * 64)
    other.write_bytes(files[3].read_bytes())  # a readable file of another prompt

    calls[0] = 0
    with caplog.at_level("WARNING", logger="comfyui_dyweight"):
        result = encoded(clip, PROMPTS, tmp_path)
    assert (calls[0], result.reused) == (3, 1)
    assert_same(result.conditionings, reference)
    for damaged in (truncated, garbage, other):
        assert str(damaged) in caplog.text
    assert "another prompt or text encoder" in caplog.text

    calls[0] = 0
    assert encoded(clip, PROMPTS, tmp_path).reused == len(PROMPTS) and calls[0] == 0  # made again

    (record,) = (tmp_path / "encodings").glob("used-weights-*.json")  # which weights the encodings depend on
    record.write_text('{"structure": ')
    caplog.clear()
    with caplog.at_level("WARNING", logger="comfyui_dyweight"):
        result = encoded(clip, PROMPTS, tmp_path)
    assert str(record) in caplog.text
    assert (calls[0], result.reused) == (1, len(PROMPTS) - 1)  # the first encode records it again
    assert_same(result.conditionings, reference)


def test_conditioning_values_round_trip_exactly_and_others_are_not_stored(tmp_path):
    """Tensors of any dtype and device and None/bool/int/float/str come back as they went in; a value that
    would not (a tuple, an object, a tensor subclass) leaves the prompt uncached instead."""
    from comfyui_dyweight.host import encodings

    extras = {"pooled_output": torch.randn(1, 4).half(), "mask": torch.ones(2, dtype=torch.bool), "none": None,
              "flag": True, "count": 3, "weight": 0.1 + 0.2, "big": 2 ** 70, "inf": math.inf, "name": "ü"}
    conditioning = [[torch.randn(1, 3, 4), extras], [torch.zeros(1, 2, 4, dtype=torch.bfloat16), {}]]
    key = {"encoder": {"weights": "w"}, "tokens": "t"}
    path = tmp_path / "entry.safetensors"
    encodings._store(path, key, "prompt", conditioning)
    restored = encodings._restored(path, key)
    assert_same([restored], [conditioning])
    assert encodings._restored(path, {**key, "tokens": "u"}) is None

    for extra in ({"range": (0.0, 1.0)}, {"hooks": object()}, {"sub": torch.nn.Parameter(torch.ones(1))}):
        with pytest.raises(encodings.NotStorable):
            encodings._flattened([[torch.zeros(1), extra]])
        encodings._store(tmp_path / "not.safetensors", key, "prompt", [[torch.zeros(1), extra]])
        assert not (tmp_path / "not.safetensors").exists()
