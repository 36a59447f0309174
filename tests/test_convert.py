"""`streamgen convert`: real checkpoint layouts at tiny sizes, converted and checked against diffusers.

No real weights: each test writes a state dict in the exact original Wan key layout (the names of Wan's ``WanModel``
and the ``CausalWanModel`` of Self-Forcing / LongLive / Anchor Forcing), wrapped the way each project saves it
(``generator_ema`` / ``generator`` entries, ``model.`` and FSDP prefixes, PEFT LoRA files), converts it through the
CLI and compares with diffusers' own ``WanTransformer3DModel`` built from the same tensors by diffusers' converter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file, save_file

from streamgen import CausalWanTransformer3DModel, StreamingVideoPipeline
from streamgen.convert import ConversionError, convert, register_cli
from streamgen.convert.config import resolve_config, tensor_config
from streamgen.convert.formats import FORMATS
from streamgen.convert.keys import strip_wrappers, to_diffusers, to_original
from streamgen.tiny import build_tiny_pipeline

DIM, HEADS, FFN, TEXT, FREQ, CHANNELS, LAYERS = 24, 2, 48, 16, 32, 4, 2
DIFFUSERS_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=DIM // HEADS, in_channels=CHANNELS,
    out_channels=CHANNELS, text_dim=TEXT, freq_dim=FREQ, ffn_dim=FFN, num_layers=LAYERS,
)
LINEARS = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]
LORA_TARGETS = [f"blocks.{i}.{m}" for i in range(LAYERS) for m in LINEARS]


# ---- original-layout checkpoints ------------------------------------------------------------------------------------
def original_shapes(dim=DIM, ffn=FFN, text=TEXT, freq=FREQ, channels=CHANNELS, layers=LAYERS) -> dict:
    """Every parameter of an original-layout Wan text-to-video transformer (``WanModel`` names) and its shape."""
    shapes = {
        "patch_embedding.weight": (dim, channels, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (channels * 4, dim), "head.head.bias": (channels * 4,), "head.modulation": (1, 2, dim),
    }
    for i in range(layers):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                shapes[f"{b}{attn}.{p}.weight"], shapes[f"{b}{attn}.{p}.bias"] = (dim, dim), (dim,)
            shapes[f"{b}{attn}.norm_q.weight"] = shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
        shapes[f"{b}norm3.weight"] = shapes[f"{b}norm3.bias"] = (dim,)
        shapes[f"{b}ffn.0.weight"], shapes[f"{b}ffn.0.bias"] = (ffn, dim), (ffn,)
        shapes[f"{b}ffn.2.weight"], shapes[f"{b}ffn.2.bias"] = (dim, ffn), (dim,)
        shapes[f"{b}modulation"] = (1, 6, dim)
    return shapes


def original_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in original_shapes().items():
        t = torch.randn(shape, generator=g) * 0.2
        out[name] = 1 + t if ".norm" in name and name.endswith(".weight") else t
    return out


def peft_lora(seed: int, rank: int = 4, prefix: str = "base_model.model.", targets=LORA_TARGETS) -> dict:
    """A LoRA as LongLive / Anchor Forcing save it: ``get_peft_model_state_dict`` of the PEFT-wrapped transformer."""
    g = torch.Generator().manual_seed(seed)
    shapes = original_shapes()
    out = {}
    for t in targets:
        rows, cols = shapes.get(f"{t}.weight", (DIM, DIM))
        out[f"{prefix}{t}.lora_A.weight"] = torch.randn(rank, cols, generator=g) * 0.3
        out[f"{prefix}{t}.lora_B.weight"] = torch.randn(rows, rank, generator=g) * 0.3
    return out


def with_prefix(sd: dict, prefix: str = "model.") -> dict:
    return {prefix + k: v for k, v in sd.items()}


def fsdp_names(sd: dict) -> dict:
    """EMA shadow names of an FSDP-wrapped ``WanDiffusionWrapper``: wrapper segments at the root and in each block."""
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            k = f"blocks.{i}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
        out[f"model._fsdp_wrapped_module.{k}"] = v
    return out


def reference_model(original: dict, lora: dict | None = None, scale: float = 1.0) -> WanTransformer3DModel:
    """diffusers' WanTransformer3DModel from the same tensors: LoRA merged by hand, diffusers' own key converter."""
    merged = {k: v.clone() for k, v in original.items()}
    if lora is not None:
        for t in LORA_TARGETS:
            a = lora[f"base_model.model.{t}.lora_A.weight"]
            b = lora[f"base_model.model.{t}.lora_B.weight"]
            merged[f"{t}.weight"] = merged[f"{t}.weight"] + scale * b @ a
    model = WanTransformer3DModel(**DIFFUSERS_CONFIG).eval()
    model.load_state_dict(convert_wan_transformer_to_diffusers(merged), strict=True)
    return model


def max_output_diff(a, b) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, CHANNELS, 3, 4, 4, generator=g)
    text = torch.randn(1, 5, TEXT, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        return (a(x, t, text).sample - b(x, t, text).sample).abs().max().item()


def assert_same_weights(converted, reference):
    ref = reference.state_dict()
    got = converted.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.allclose(got[k], v, atol=1e-6, rtol=0), k


# ---- CLI ------------------------------------------------------------------------------------------------------------
def run_cli(*argv) -> int:
    """``streamgen convert ...`` through a parser built the way ``streamgen.cli`` builds its own."""
    parser = argparse.ArgumentParser(prog="streamgen")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.func(args)


def assert_failed(capsys, rc, folder, before, *needles):
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert set(folder.iterdir()) == before, "the failed conversion left files behind"
    return err


# ---- key mapping ----------------------------------------------------------------------------------------------------
def test_key_mapping_matches_diffusers_converter_and_the_diffusers_model():
    original = original_weights(0)
    ours = {to_diffusers(k): v for k, v in original.items()}
    theirs = convert_wan_transformer_to_diffusers(dict(original))
    assert set(ours) == set(theirs)
    for k in ours:
        assert ours[k] is theirs[k], k
    model = WanTransformer3DModel(**DIFFUSERS_CONFIG)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in ours.items()}
    # and back: every diffusers name has exactly one original name
    assert {to_original(k) for k in model.state_dict()} == set(original)
    assert all(to_diffusers(to_original(k)) == k for k in model.state_dict())


def test_the_norm_swap_and_module_paths():
    assert to_diffusers("blocks.3.norm3.weight") == "blocks.3.norm2.weight"  # affine cross-attention norm
    assert to_diffusers("blocks.3.norm2.weight") == "blocks.3.norm3.weight"  # FFN norm (no params in Wan)
    assert to_diffusers("blocks.0.self_attn.o") == "blocks.0.attn1.to_out.0"  # LoRA targets are module paths
    assert to_diffusers("blocks.0.ffn.0") == "blocks.0.ffn.net.0.proj"
    assert to_diffusers("head.modulation") == "scale_shift_table"
    assert to_diffusers("blocks.0.modulation") == "blocks.0.scale_shift_table"
    assert to_diffusers("blocks.0.self_attn.qq.weight") is None
    assert to_diffusers("img_emb.proj.0.weight") is None
    fsdp = "model._fsdp_wrapped_module.blocks.0._fsdp_wrapped_module.ffn.0.weight"
    assert strip_wrappers(fsdp) == "blocks.0.ffn.0.weight"
    assert strip_wrappers("module._orig_mod.model.head.head.bias") == "head.head.bias"
    peft = "base_model.model.blocks.1.cross_attn.k.lora_A.weight"
    assert strip_wrappers(peft) == "blocks.1.cross_attn.k.lora_A.weight"
    assert strip_wrappers("model.diffusion_model.patch_embedding.weight") == "patch_embedding.weight"


def test_config_of_the_real_1_3b_checkpoint_is_diffusers_own():
    # Shapes only (meta tensors): Wan2.1-T2V-1.3B's original layout gives the Wan2.1-T2V-1.3B-Diffusers config.
    shapes = original_shapes(dim=1536, ffn=8960, text=4096, freq=256, channels=16, layers=30)
    sd = {to_diffusers(k): torch.empty(s, device="meta") for k, s in shapes.items()}
    config = resolve_config(tensor_config(sd, True), {}, "defaults")
    expected = dict(
        patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    )
    assert {k: config[k] for k in expected} == expected
    with torch.device("meta"):
        model = WanTransformer3DModel(**{k: v for k, v in config.items() if k != "patch_size"}, patch_size=(1, 2, 2))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in sd.items()}


def test_importing_the_package_does_not_import_torch():
    code = "import sys, streamgen.convert; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the four formats -----------------------------------------------------------------------------------------------
def test_self_forcing_release_uses_generator_ema(tmp_path, capsys):
    ema = original_weights(1)
    torch.save({"generator_ema": with_prefix(ema)}, tmp_path / "self_forcing_dmd.pt")
    out = tmp_path / "out"
    assert run_cli("--format", "self-forcing", "--ckpt", tmp_path / "self_forcing_dmd.pt", "--out", out,
                   "--num-heads", HEADS) == 0
    assert "generator_ema" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["transformer"]  # no --base-pipeline: transformer only
    assert out.stat().st_mode & 0o777 == (out / "transformer").stat().st_mode & 0o777  # not the temp folder's 0700
    model = CausalWanTransformer3DModel.from_pretrained(out / "transformer")
    reference = reference_model(ema)
    assert_same_weights(model, reference)
    assert max_output_diff(model, reference) <= 1e-5


def test_self_forcing_training_checkpoint_prefers_ema_and_strips_fsdp_names(tmp_path):
    ema, raw = original_weights(2), original_weights(3)
    torch.save(
        {"generator": with_prefix(raw), "critic": with_prefix(original_weights(4)), "generator_ema": fsdp_names(ema),
         "step": 600},
        tmp_path / "model.pt",
        _use_new_zipfile_serialization=False,  # the legacy (pre-1.6) pickle format still loads, weights_only
    )
    result = convert("self-forcing", tmp_path / "model.pt", out=tmp_path / "out", config={"num_attention_heads": 2})
    assert result.source == "generator_ema" and any("also holds generator" in n for n in result.notes)
    model = CausalWanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer")
    assert_same_weights(model, reference_model(ema))
    # --weights picks the other entry
    convert("self-forcing", tmp_path / "model.pt", out=tmp_path / "raw", config={"num_attention_heads": 2},
            weights="generator")
    assert_same_weights(CausalWanTransformer3DModel.from_pretrained(tmp_path / "raw" / "transformer"),
                        reference_model(raw))


def test_longlive_base_plus_lora_with_rank_and_alpha_flags(tmp_path, capsys):
    base, lora = original_weights(5), peft_lora(6, rank=4)
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-5, "params": [0]}]}
    torch.save({"generator": with_prefix(base), "critic": with_prefix(original_weights(7)),
                "generator_optimizer": optimizer, "step": 3000}, tmp_path / "longlive_base.pt")
    torch.save({"generator_lora": lora, "critic_lora": peft_lora(8), "step": 1000}, tmp_path / "lora.pt")
    out = tmp_path / "out"
    assert run_cli("--format", "longlive", "--ckpt", tmp_path / "longlive_base.pt", "--lora", tmp_path / "lora.pt",
                   "--lora-rank", 4, "--lora-alpha", 8, "--out", out, "--num-heads", HEADS) == 0
    log = capsys.readouterr().out
    assert f"merged {len(LORA_TARGETS)} pairs" in log and "scale 2" in log
    model = CausalWanTransformer3DModel.from_pretrained(out / "transformer")
    reference = reference_model(base, lora, scale=8 / 4)
    assert_same_weights(model, reference)
    assert max_output_diff(model, reference) <= 1e-5
    assert max_output_diff(model, reference_model(base)) > 1e-3  # the LoRA did change the model


def test_anchor_forcing_base_plus_final_defaults_to_alpha_equal_rank(tmp_path, capsys):
    base, lora = original_weights(9), peft_lora(10, rank=3)
    torch.save({"generator": with_prefix(base)}, tmp_path / "base.pt")
    torch.save({"generator_lora": lora}, tmp_path / "final.pt")
    out = tmp_path / "out"
    assert run_cli("--format", "anchor-forcing", "--ckpt", tmp_path / "base.pt", "--lora", tmp_path / "final.pt",
                   "--out", out, "--num-heads", HEADS) == 0
    assert "alpha = rank" in capsys.readouterr().out
    model = CausalWanTransformer3DModel.from_pretrained(out / "transformer")
    reference = reference_model(base, lora, scale=1.0)
    assert_same_weights(model, reference)
    assert max_output_diff(model, reference) <= 1e-5


def test_wan_safetensors_with_a_peft_adapter_folder(tmp_path):
    # A bare original-layout file (ComfyUI-style prefix) and a PEFT adapter folder whose config gives r and alpha.
    base, lora = original_weights(11), peft_lora(12, rank=4)
    save_file(with_prefix(base, "model.diffusion_model."), tmp_path / "wan.safetensors")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({k.replace(".weight", ".default.weight"): v for k, v in lora.items()},
              adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2, "peft_type": "LORA"}))
    result = convert("wan", tmp_path / "wan.safetensors", lora=adapter, out=tmp_path / "out",
                     config={"num_attention_heads": 2}, dtype="float32")
    assert result.lora.scales == [0.5] and "adapter_config.json" in result.lora.alpha_source
    model = CausalWanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer")
    reference = reference_model(base, lora, scale=0.5)
    assert_same_weights(model, reference)
    assert max_output_diff(model, reference) <= 1e-5


def test_wan_release_folder_takes_heads_from_its_config(tmp_path):
    base = original_weights(13)
    folder = tmp_path / "Wan-tiny"
    folder.mkdir()
    save_file(base, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": DIM, "num_heads": HEADS,
                                                    "ffn_dim": FFN, "in_dim": 4, "out_dim": 4, "model_type": "t2v"}))
    convert("wan", folder, out=tmp_path / "out", dtype="bfloat16")
    model = CausalWanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer")
    assert model.config.num_attention_heads == HEADS
    stored = load_file(tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}


def test_config_flag_takes_an_original_wan_config_json(tmp_path, capsys):
    torch.save({"generator_ema": with_prefix(original_weights(18))}, tmp_path / "sf.pt")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": DIM, "num_heads": HEADS}))
    assert run_cli("--format", "self-forcing", "--ckpt", tmp_path / "sf.pt", "--config", tmp_path / "config.json",
                   "--out", tmp_path / "out") == 0
    assert "2 heads x 12" in capsys.readouterr().out


def test_weights_already_in_diffusers_layout_pass_through(tmp_path):
    reference = reference_model(original_weights(17))
    save_file(reference.state_dict(), tmp_path / "diffusers.safetensors")
    result = convert("wan", tmp_path / "diffusers.safetensors", out=tmp_path / "out", config={"num_attention_heads": 2})
    assert any("diffusers' layout" in n for n in result.notes)
    assert_same_weights(CausalWanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer"), reference)


# ---- a pipeline folder around the user's Wan diffusers folder -------------------------------------------------------
@pytest.fixture(scope="module")
def wan_diffusers_folder(tmp_path_factory):
    """A tiny stand-in for Wan2.1-T2V-1.3B-Diffusers: WanPipeline with UMT5, AutoencoderKLWan and UniPC."""
    tiny = build_tiny_pipeline(vae="wan", dim_heads=(HEADS, DIM // HEADS), text_dim=TEXT, num_layers=LAYERS)
    torch.manual_seed(0)
    pipe = WanPipeline(
        tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=tiny.vae,
        scheduler=UniPCMultistepScheduler(flow_shift=3.0, prediction_type="flow_prediction", use_flow_sigmas=True),
        transformer=WanTransformer3DModel(**DIFFUSERS_CONFIG),
    )
    path = tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny-Diffusers"
    pipe.save_pretrained(path)
    return path


def test_pipeline_folder_links_the_wan_components_and_generates(tmp_path, wan_diffusers_folder, capsys):
    ema = original_weights(14)
    torch.save({"generator_ema": with_prefix(ema)}, tmp_path / "self_forcing_dmd.pt")
    out = tmp_path / "pipelines" / "self-forcing"
    assert run_cli("--format", "self-forcing", "--ckpt", tmp_path / "self_forcing_dmd.pt",
                   "--base-pipeline", wan_diffusers_folder, "--out", out) == 0  # heads from the folder's config
    assert "symbolic links" in capsys.readouterr().out
    for name in ("text_encoder", "tokenizer", "vae"):
        assert (out / name).is_symlink() and (out / name).resolve() == (wan_diffusers_folder / name).resolve()
    assert not (out / "scheduler").is_symlink()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StreamingVideoPipeline"
    assert index["transformer"] == ["streamgen.models.causal_wan", "CausalWanTransformer3DModel"]
    keys = ("chunk_frames", "denoising_timesteps", "fps", "height", "width", "default_cache")
    assert {k: index[k] for k in keys} == {
        "chunk_frames": 3, "denoising_timesteps": [1000, 750, 500, 250], "fps": 16, "height": 480, "width": 832,
        "default_cache": "self-forcing",
    }
    pipe = StreamingVideoPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler" and pipe.scheduler.config.flow_shift == 5.0
    assert pipe.make_sampler().shift == 5.0
    assert_same_weights(pipe.transformer, reference_model(ema))
    frames = pipe("a red circle", num_frames=9, height=32, width=32, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(frames)).all())


def test_each_release_format_defaults_to_its_own_cache_preset():
    assert {name: FORMATS[name].default_cache for name in ("self-forcing", "longlive", "anchor-forcing")} == {
        "self-forcing": "self-forcing", "longlive": "longlive", "anchor-forcing": "anchor-forcing"}


def test_longlive_pipeline_defaults_to_the_longlive_cache(tmp_path, wan_diffusers_folder):
    torch.save({"generator": with_prefix(original_weights(15))}, tmp_path / "longlive_base.pt")
    torch.save({"generator_lora": peft_lora(16)}, tmp_path / "lora.pt")
    result = convert("longlive", tmp_path / "longlive_base.pt", lora=tmp_path / "lora.pt",
                     base_pipeline=wan_diffusers_folder, out=tmp_path / "out")
    assert result.pipeline
    assert json.loads((tmp_path / "out" / "model_index.json").read_text())["default_cache"] == "longlive"
    pipe = StreamingVideoPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle", num_frames=9, height=32, width=32, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 32, 32, 3)


# ---- errors: non-zero exit, one paragraph, nothing left behind ------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    """A Self-Forcing release, an Anchor Forcing base + final, a bare Wan file: the inputs of the error tests."""
    torch.save({"generator_ema": with_prefix(original_weights(20))}, tmp_path / "self_forcing_dmd.pt")
    torch.save({"generator": with_prefix(original_weights(21))}, tmp_path / "base.pt")
    torch.save({"generator_lora": peft_lora(22)}, tmp_path / "final.pt")
    save_file(original_weights(23), tmp_path / "wan.safetensors")
    return tmp_path


def _truncated(folder):
    data = (folder / "self_forcing_dmd.pt").read_bytes()
    (folder / "cut.pt").write_bytes(data[: len(data) // 2])
    return ["--format", "self-forcing", "--ckpt", folder / "cut.pt"], ["is truncated"]


def _corrupted(folder):
    data = bytearray((folder / "self_forcing_dmd.pt").read_bytes())
    data[:64] = bytes(64)
    (folder / "bad.pt").write_bytes(bytes(data))
    return ["--format", "self-forcing", "--ckpt", folder / "bad.pt"], ["corrupted"]


def _flipped_tensor_bytes(folder):
    # Bytes flipped inside one tensor: torch.load itself would not notice (memory-mapped, no CRC check).
    sd = original_weights(20)
    data = bytearray((folder / "self_forcing_dmd.pt").read_bytes())
    at = bytes(data).index(sd["blocks.1.ffn.0.weight"].numpy().tobytes())
    data[at + 100 : at + 104] = b"\x00\x01\x02\x03"
    (folder / "flipped.pt").write_bytes(bytes(data))
    return ["--format", "self-forcing", "--ckpt", folder / "flipped.pt", "--num-heads", "2"], ["CRC check"]


def _pickled_object(folder):
    checkpoint = {"generator_ema": with_prefix(original_weights(20)), "args": argparse.Namespace(lr=1)}
    torch.save(checkpoint, folder / "obj.pt")
    return ["--format", "self-forcing", "--ckpt", folder / "obj.pt"], ["argparse.Namespace", "weights_only=True"]


def _truncated_legacy(folder):
    torch.save({"generator_ema": with_prefix(original_weights(20))}, folder / "legacy.pt",
               _use_new_zipfile_serialization=False)
    data = (folder / "legacy.pt").read_bytes()
    (folder / "legacy.pt").write_bytes(data[: len(data) // 2])
    return ["--format", "self-forcing", "--ckpt", folder / "legacy.pt"], ["truncated or corrupted"]


def _truncated_safetensors(folder):
    data = (folder / "wan.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) - 100])
    return ["--format", "wan", "--ckpt", folder / "cut.safetensors", "--num-heads", "2"], ["safetensors"]


def _text_file(folder):
    (folder / "notes.pt").write_text("this is not a checkpoint\n")
    return ["--format", "longlive", "--ckpt", folder / "notes.pt"], ["neither a PyTorch nor a safetensors"]


def _not_a_dict(folder):
    torch.save([torch.zeros(2)], folder / "list.pt")
    return ["--format", "self-forcing", "--ckpt", folder / "list.pt"], ["not a model checkpoint dict"]


def _lora_as_self_forcing(folder):
    return ["--format", "self-forcing", "--ckpt", folder / "final.pt"], ["LoRA checkpoint", "--lora"]


def _anchor_pair_as_self_forcing(folder):
    return ["--format", "self-forcing", "--ckpt", folder / "base.pt", "--lora", folder / "final.pt"], ["anchor-forcing"]


def _bare_dict_as_self_forcing(folder):
    return ["--format", "self-forcing", "--ckpt", folder / "wan.safetensors"], ["--format wan"]


def _training_checkpoint_as_wan(folder):
    return ["--format", "wan", "--ckpt", folder / "self_forcing_dmd.pt"], ["generator_ema", "--format self-forcing"]


def _full_model_as_lora(folder):
    return ["--format", "anchor-forcing", "--ckpt", folder / "base.pt", "--lora", folder / "base.pt",
            "--num-heads", "2"], ["full model checkpoint"]


def _missing_key(folder):
    sd = original_weights(24)
    del sd["blocks.1.ffn.2.bias"], sd["blocks.0.cross_attn.norm_k.weight"]
    torch.save({"generator_ema": with_prefix(sd)}, folder / "missing.pt")
    return (["--format", "self-forcing", "--ckpt", folder / "missing.pt", "--num-heads", "2"],
            ["missing keys (2)", "blocks.1.ffn.2.bias", "blocks.0.cross_attn.norm_k.weight"])


def _unexpected_key(folder):
    sd = original_weights(25)
    sd["blocks.0.self_attn.gate.weight"] = torch.zeros(3)
    sd["img_emb.proj.0.weight"] = torch.zeros(3)
    torch.save({"generator": with_prefix(sd)}, folder / "extra.pt")
    return (["--format", "longlive", "--ckpt", folder / "extra.pt", "--num-heads", "2"],
            ["unexpected keys", "blocks.0.self_attn.gate.weight", "img_emb.proj.0.weight", "image-to-video"])


def _extra_block(folder):
    sd = original_weights(26)
    sd["blocks.2.ffn.0.weight"] = torch.zeros(FFN, DIM)
    torch.save({"generator_ema": with_prefix(sd)}, folder / "block.pt")
    return (
        ["--format", "self-forcing", "--ckpt", folder / "block.pt", "--num-heads", "2"],
        ["blocks.2.self_attn.q.weight"],
    )


def _wrong_shape(folder):
    sd = original_weights(27)
    sd["blocks.1.self_attn.k.weight"] = torch.zeros(DIM, DIM + 1)
    torch.save({"generator_ema": with_prefix(sd)}, folder / "shape.pt")
    return (
        ["--format", "self-forcing", "--ckpt", folder / "shape.pt", "--num-heads", "2"],
        ["blocks.1.self_attn.k.weight [24, 25]"],
    )


def _not_finite(folder):
    sd = original_weights(28)
    sd["blocks.0.ffn.0.weight"][3, 4] = float("nan")
    torch.save({"generator_ema": with_prefix(sd)}, folder / "nan.pt")
    return (
        ["--format", "self-forcing", "--ckpt", folder / "nan.pt", "--num-heads", "2"], ["NaN", "blocks.0.ffn.0.weight"]
    )


def _lora_hitting_nothing(folder):
    lora = peft_lora(29, targets=LORA_TARGETS + ["blocks.5.self_attn.q", "blocks.0.self_attn.qq", "head.norm"])
    torch.save({"generator_lora": lora}, folder / "stray.pt")
    return (["--format", "anchor-forcing", "--ckpt", folder / "base.pt", "--lora", folder / "stray.pt",
             "--num-heads", "2"], ["3 LoRA pair(s)", "blocks.5.self_attn.q", "blocks.0.self_attn.qq", "head.norm"])


def _lora_incomplete_pair(folder):
    lora = peft_lora(30)
    del lora["base_model.model.blocks.1.ffn.2.lora_B.weight"]
    torch.save({"generator_lora": lora}, folder / "half.pt")
    return (["--format", "longlive", "--ckpt", folder / "base.pt", "--lora", folder / "half.pt", "--num-heads", "2"],
            ["incomplete", "blocks.1.ffn.2"])


def _lora_rank_mismatch(folder):
    return (["--format", "longlive", "--ckpt", folder / "base.pt", "--lora", folder / "final.pt", "--lora-rank", "256",
             "--lora-alpha", "256", "--num-heads", "2"], ["--lora-rank says rank 256", "have rank 4"])


def _lora_without_alpha(folder):
    save_file(peft_lora(31), folder / "generic_lora.safetensors")
    return (["--format", "wan", "--ckpt", folder / "wan.safetensors", "--lora", folder / "generic_lora.safetensors",
             "--num-heads", "2"], ["--lora-alpha"])


def _weights_entry_missing(folder):
    return (["--format", "self-forcing", "--ckpt", folder / "self_forcing_dmd.pt", "--weights", "generator"],
            ["no 'generator' entry", "generator_ema"])


def _heads_unknown(folder):
    return ["--format", "self-forcing", "--ckpt", folder / "self_forcing_dmd.pt"], ["--num-heads"]


def _not_a_base_pipeline(folder):
    (folder / "empty").mkdir()
    return (["--format", "self-forcing", "--ckpt", folder / "self_forcing_dmd.pt", "--base-pipeline", folder / "empty"],
            ["model_index.json"])


CASES = [
    _truncated, _corrupted, _flipped_tensor_bytes, _pickled_object, _truncated_legacy, _truncated_safetensors,
    _text_file, _not_a_dict, _lora_as_self_forcing, _anchor_pair_as_self_forcing, _bare_dict_as_self_forcing,
    _training_checkpoint_as_wan, _full_model_as_lora, _missing_key, _unexpected_key, _extra_block, _wrong_shape,
    _not_finite, _lora_hitting_nothing, _lora_incomplete_pair, _lora_rank_mismatch, _lora_without_alpha,
    _weights_entry_missing, _heads_unknown, _not_a_base_pipeline,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_input_fails_with_one_paragraph_and_leaves_nothing(files, capsys, case):
    argv, needles = case(files)
    before = set(files.iterdir())
    rc = run_cli(*argv, "--out", files / "converted" / "out")
    assert_failed(capsys, rc, files, before, *needles)


def test_an_existing_output_folder_is_refused_and_left_alone(files, capsys):
    out = files / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = set(files.iterdir())
    rc = run_cli("--format", "self-forcing", "--ckpt", files / "self_forcing_dmd.pt", "--out", out, "--num-heads", 2)
    assert_failed(capsys, rc, files, before, "already exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_a_failure_while_writing_removes_the_partial_output(files, monkeypatch, wan_diffusers_folder):
    def disk_full(self, *args, **kwargs):
        (args[0] if args else kwargs["save_directory"]).mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CausalWanTransformer3DModel, "save_pretrained", disk_full)
    before = set(files.iterdir())
    with pytest.raises(ConversionError, match="No space left"):
        convert("self-forcing", files / "self_forcing_dmd.pt", base_pipeline=wan_diffusers_folder,
                out=files / "new" / "nested" / "out")
    assert set(files.iterdir()) == before  # neither the output, its temp folder, nor the created parents remain


def test_the_error_message_is_one_paragraph_even_for_long_key_lists(files):
    sd = {f"blocks.0.extra_{i}.weight\n": torch.zeros(1) for i in range(40)}
    torch.save({"generator_ema": sd}, files / "many.pt")
    with pytest.raises(ConversionError) as info:
        convert("self-forcing", files / "many.pt", out=files / "out")
    assert "\n" not in str(info.value) and "and 28 more" in str(info.value)
    assert not (files / "out").exists()
