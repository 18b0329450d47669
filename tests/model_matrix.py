"""Tiny real models of every model family ComfyUI ships for image and video sampling.

Each family is built from ComfyUI's own supported-model config class (``comfy.supported_models``) and
model class, with the smallest sizes its architecture allows and seeded random weights; conditioning
has the shapes and extras the model's ``extra_conds`` reads. Used by tests/test_model_matrix.py.

    spec = FAMILIES["flux"]; model = build(spec); positive, negative = conditioning(spec, batch=2)

REFUSED_FAMILIES holds the families the pack refuses to sample (with a message saying how to run them).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import comfy_host

CONTEXT = 32  # text-embedding width of every tiny model
TOKENS = 8


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    config: str                      # comfy.supported_models class name
    unet_config: dict
    latent: tuple                    # one latent without the batch: (C, H, W) or (C, T, H, W)
    prediction: str                  # what ModelFacts must say
    state_dict: dict = dataclasses.field(default_factory=dict)  # markers and weights get_model reads
    model_type: Optional[str] = None  # a comfy.model_base.ModelType name, for configs that don't read markers
    sampling_settings: dict = dataclasses.field(default_factory=dict)
    extras: Callable = None          # (generator, batch) -> dict of conditioning extras
    noise_mask: Callable = None      # batch -> the latent's noise_mask, where the image goes in the latent
    context: int = CONTEXT
    sigma_data: float = 1.0


def _randn(gen, *shape):
    import torch

    return torch.randn(*shape, generator=gen)


def _token_mask(batch):
    """An attention mask as the text encoders give it: integer ones for the TOKENS real tokens."""
    import torch

    return torch.ones(batch, TOKENS, dtype=torch.long)


def _pooled(dim, **more):
    return lambda gen, batch: {"pooled_output": _randn(gen, batch, dim), **more}


def _first_frame_kept(*shape):
    """A mask over a video latent (1, 1, T, H, W): 0 on the first frame, which is given, 1 on the frames to
    generate, as ComfyUI's image-to-video nodes make it."""
    import torch

    mask = torch.ones(1, 1, *shape)
    mask[:, :, :1] = 0.0
    return mask


def _clip_vision_output(gen, **outputs):
    """A CLIP_VISION_OUTPUT (comfy.clip_vision.Output) with the named outputs of the given shapes."""
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    for name, shape in outputs.items():
        output[name] = _randn(gen, *shape)
    return output


def _image_to_video(channels=16, mask=True, clip_vision=False):
    """The extras of a video model given a start image: its latent concatenated to the noise (and the mask of
    the frames it fills), as WanImageToVideo and HunyuanImageToVideo set them, and a CLIP vision output."""
    def extras(gen, batch):
        out = {"concat_latent_image": _randn(gen, 1, channels, 2, 8, 8)}
        if mask:
            out["concat_mask"] = _first_frame_kept(2, 8, 8)
        if clip_vision:
            out["clip_vision_output"] = _clip_vision_output(gen, penultimate_hidden_states=(1, 4, 1280))
        return out
    return extras


def _merged(*extras):
    return lambda gen, batch: {key: value for one in extras for key, value in one(gen, batch).items()}


def _seeded(*shape):
    """A fixed tensor for a checkpoint weight that ``get_model`` takes from the state dict."""
    import torch

    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _square_mask():
    """A pixel-space inpainting mask (1, 1, 64, 64) over the 8×8 latent: a square in the middle to repaint."""
    import torch

    mask = torch.zeros(1, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1.0
    return mask


def _unclip(gen, width):
    """unCLIPConditioning's extra: a CLIP image embedding with its strength and noise augmentation."""
    return {"unclip_conditioning": [{"clip_vision_output": _clip_vision_output(gen, image_embeds=(1, width)),
                                     "strength": 1.0, "noise_augmentation": 0.1}]}


def _camera_embedding(gen, batch):
    """WanCameraEmbedding's output as WanCameraImageToVideo passes it: 24 Plücker channels at 8× the latent size."""
    return {"camera_conditions": _randn(gen, 1, 24, 2, 64, 64)}


def _sd_unet(model_channels=32, context_dim=CONTEXT, adm=None, in_channels=4, heads=None, **more):
    config = {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": adm, "in_channels": in_channels, "out_channels": 4, "model_channels": model_channels,
        "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
        "channel_mult": [1, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
        "context_dim": context_dim, "use_temporal_resblock": False, "use_temporal_attention": False,
    }
    config.update(more)
    return config


SDXL_UNET = _sd_unet(model_channels=64, adm=CONTEXT + 6 * 256, num_classes="sequential", use_linear_in_transformer=True,
                     transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1])
SDXL_EXTRAS = _pooled(CONTEXT, width=64, height=64, crop_w=0, crop_h=0, target_width=64, target_height=64)
FLUX_DIT = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": CONTEXT,
            "context_in_dim": CONTEXT, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
            "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True}

def _wan(model_type, in_dim=16, out_dim=16, **more):
    return {"image_model": "wan2.1", "model_type": model_type, "patch_size": (1, 2, 2), "text_len": TOKENS,
            "in_dim": in_dim, "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": CONTEXT, "out_dim": out_dim,
            "num_heads": 2, "num_layers": 1, **more}


HUNYUAN_VIDEO_DIT = {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": CONTEXT,
                     "context_in_dim": CONTEXT, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
                     "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 256, "patch_size": [1, 2, 2],
                     "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False}
COSMOS_DIT = {"image_model": "cosmos", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
              "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "concat_padding_mask": True,
              "block_config": "FA-CA-MLP", "model_channels": 64, "num_blocks": 1, "num_heads": 2,
              "crossattn_emb_channels": CONTEXT, "pos_emb_cls": "rope3d", "block_x_format": "THWBD",
              "affline_emb_norm": True, "use_adaln_lora": True, "adaln_lora_dim": 16,
              "extra_per_block_abs_pos_emb": True, "extra_per_block_abs_pos_emb_type": "learnable"}
COSMOS_PREDICT2_DIT = {"image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
                       "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
                       "concat_padding_mask": True, "model_channels": 64, "num_blocks": 1, "num_heads": 2,
                       "crossattn_emb_channels": CONTEXT, "pos_emb_cls": "rope3d", "pos_emb_learnable": True,
                       "use_adaln_lora": True, "adaln_lora_dim": 16, "rope_enable_fps_modulation": False}
SVD_UNET = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
            "adm_in_channels": 3 * 256, "num_classes": "sequential", "in_channels": 8, "out_channels": 4,
            "model_channels": 64, "num_res_blocks": [1, 1], "transformer_depth": [1, 1],
            "transformer_depth_output": [1, 1, 1, 1], "channel_mult": [1, 2], "transformer_depth_middle": 1,
            "use_linear_in_transformer": True, "context_dim": CONTEXT, "use_temporal_resblock": True,
            "use_temporal_attention": True, "extra_ff_mix_layer": True, "use_spatial_context": True,
            "merge_strategy": "learned_with_images", "video_kernel_size": [3, 1, 1]}

HUNYUAN_DIT = {"image_model": "hydit", "input_size": [8, 8], "patch_size": 2, "in_channels": 4, "hidden_size": 88,
               "depth": 2, "num_heads": 1, "text_states_dim": CONTEXT, "text_states_dim_t5": CONTEXT,
               "text_len": TOKENS, "text_len_t5": TOKENS, "size_cond": False, "use_style_cond": False}


def _hunyuan_dit_extras(gen, batch):
    return {"attention_mask": _token_mask(batch), "conditioning_mt5xl": _randn(gen, batch, TOKENS, CONTEXT),
            "attention_mask_mt5xl": _token_mask(batch)}


FAMILIES = {f.name: f for f in [
    Family("sd15-eps", "SD15", _sd_unet(), (4, 8, 8), "eps", extras=_pooled(CONTEXT)),
    Family("sd15-v", "SD15", _sd_unet(), (4, 8, 8), "v", model_type="V_PREDICTION", extras=_pooled(CONTEXT)),
    Family("sd15-zsnr", "SD15", _sd_unet(), (4, 8, 8), "v", model_type="V_PREDICTION",
           sampling_settings={"zsnr": True}, extras=_pooled(CONTEXT)),
    Family("sdxl-eps", "SDXL", SDXL_UNET, (4, 8, 8), "eps", extras=SDXL_EXTRAS),
    Family("sdxl-edm", "SDXL", SDXL_UNET, (4, 8, 8), "v", state_dict={"edm_mean": 1, "edm_std": 1},
           extras=SDXL_EXTRAS, sigma_data=0.5),
    Family("sd3", "SD3", {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "input_size": None,
                          "adm_in_channels": CONTEXT, "pos_embed_scaling_factor": None, "pos_embed_max_size": 16,
                          "num_patches": 256, "qk_norm": None, "x_block_self_attn_layers": [],
                          "context_embedder_config": {"target": "torch.nn.Linear",
                                                      "params": {"in_features": CONTEXT, "out_features": 64}}},
         (16, 8, 8), "flow", extras=_pooled(CONTEXT)),
    Family("flux", "Flux", {**FLUX_DIT, "guidance_embed": True}, (16, 8, 8), "flow",
           extras=_pooled(CONTEXT, guidance=3.5)),
    Family("flux-schnell", "FluxSchnell", {**FLUX_DIT, "guidance_embed": False}, (16, 8, 8), "flow",
           extras=_pooled(CONTEXT)),
    Family("chroma", "Chroma", {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "patch_size": 2,
                                "context_in_dim": CONTEXT, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
                                "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000,
                                "qkv_bias": True, "in_dim": 64, "out_dim": 64,
                                "hidden_dim": 32, "n_layers": 1},
           (16, 8, 8), "flow", extras=_pooled(CONTEXT)),
    Family("auraflow", "AuraFlow", {"in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 64, "n_layers": 2,
                                    "n_double_layers": 1, "n_heads": 2, "cond_seq_dim": CONTEXT, "max_seq": 64},
           (4, 8, 8), "flow"),
    Family("lumina2", "Lumina2", {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64,
                                  "n_layers": 1, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 1,
                                  "multiple_of": 16, "qk_norm": True, "cap_feat_dim": CONTEXT,
                                  "axes_dims": [8, 12, 12], "axes_lens": [300, 64, 64]},
           (16, 8, 8), "flow", extras=lambda gen, batch: {"attention_mask": _token_mask(batch)}),
    Family("hidream", "HiDream", {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16,
                                  "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 32,
                                  "num_attention_heads": 2, "caption_channels": [CONTEXT, CONTEXT],
                                  "text_emb_dim": CONTEXT, "num_routed_experts": 2, "num_activated_experts": 1,
                                  "axes_dims_rope": [16, 8, 8], "max_resolution": [16, 16], "llama_layers": [0, 0]},
           (16, 8, 8), "flow",
           extras=lambda gen, batch: {"pooled_output": _randn(gen, batch, CONTEXT),
                                      "conditioning_llama3": _randn(gen, batch, 2, TOKENS, CONTEXT)}),
    Family("qwen-image", "QwenImage", {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64,
                                        "out_channels": 16, "num_layers": 1, "attention_head_dim": 32,
                                        "num_attention_heads": 2, "joint_attention_dim": CONTEXT,
                                        "axes_dims_rope": [8, 12, 12]},
           (16, 8, 8), "flow"),
    Family("wan21", "WAN21_T2V", _wan("t2v"), (16, 2, 8, 8), "flow"),
    Family("wan22", "WAN22_T2V", _wan("t2v", in_dim=48, out_dim=48), (48, 2, 8, 8), "flow"),
    # Wan 2.2 TI2V: the start image sits in the latent, kept by its noise mask (Wan22ImageToVideoLatent),
    # which the model also reads to give the kept frames timestep 0.
    Family("wan22-ti2v", "WAN22_T2V", _wan("t2v", in_dim=48, out_dim=48), (48, 2, 8, 8), "flow",
           noise_mask=lambda batch: _first_frame_kept(2, 8, 8).repeat(batch, 1, 1, 1, 1)),
    Family("hunyuan-video", "HunyuanVideo", HUNYUAN_VIDEO_DIT, (16, 2, 8, 8), "flow",
           extras=_pooled(CONTEXT, guidance=6.0)),
    Family("ltxv", "LTXV", {"image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 64,
                            "attention_head_dim": 32, "num_attention_heads": 2, "caption_channels": CONTEXT,
                            "num_layers": 1},
           (128, 2, 4, 4), "flow", extras=lambda gen, batch: {"attention_mask": _token_mask(batch)}),
    Family("cosmos-t2v", "CosmosT2V", COSMOS_DIT, (16, 2, 8, 8), "v", sigma_data=0.5),
    Family("cosmos-predict2", "CosmosT2IPredict2", COSMOS_PREDICT2_DIT, (16, 1, 8, 8), "flow"),
    # PixArt's position embedding divides by round(latent side / 64): its smallest latent side is 40;
    # PixArt-α's size and aspect-ratio embeddings take a third of the width each (72 = 3·24).
    Family("pixart-alpha", "PixArtAlpha", {"image_model": "pixart_alpha", "input_size": 64, "patch_size": 2,
                                           "in_channels": 4, "hidden_size": 72, "depth": 1, "num_heads": 2,
                                           "caption_channels": CONTEXT, "pe_interpolation": 1.0,
                                           "micro_condition": True, "model_max_length": TOKENS},
           (4, 40, 40), "eps", extras=lambda gen, batch: {"width": 64, "height": 64}),
    Family("pixart-sigma", "PixArtSigma", {"image_model": "pixart_sigma", "input_size": 64, "patch_size": 2,
                                           "in_channels": 4, "hidden_size": 64, "depth": 1, "num_heads": 2,
                                           "caption_channels": CONTEXT, "pe_interpolation": 1.0,
                                           "micro_condition": False, "model_max_length": TOKENS},
           (4, 40, 40), "eps"),
    Family("hunyuan-dit", "HunyuanDiT", HUNYUAN_DIT, (4, 8, 8), "v", extras=_hunyuan_dit_extras),
    # v1.0: size and style conditioning and its own β schedule (linear_end 0.03).
    Family("hunyuan-dit-1.0", "HunyuanDiT1", {**HUNYUAN_DIT, "image_model": "hydit1", "size_cond": True,
                                              "use_style_cond": True}, (4, 8, 8), "v",
           extras=_merged(_hunyuan_dit_extras, lambda gen, batch: {"width": 64, "height": 64})),
    Family("mochi", "GenmoMochi", {"image_model": "mochi_preview", "depth": 1, "patch_size": 2, "num_heads": 2,
                                   "hidden_size_x": 64, "hidden_size_y": 32, "mlp_ratio_x": 12288 / 64, "mlp_ratio_y": 2.0,
                                   "learn_sigma": False, "in_channels": 12, "qk_norm": True, "qkv_bias": False,
                                   "out_bias": True, "attn_drop": 0.0, "patch_embed_bias": True,
                                   "posenc_preserve_area": True, "timestep_mlp_bias": True,
                                   "attend_to_padding": False, "timestep_scale": 1000.0, "use_t5": True,
                                   "t5_feat_dim": CONTEXT, "t5_token_length": TOKENS, "rope_theta": 10000.0},
           (12, 2, 8, 8), "flow", extras=lambda gen, batch: {"attention_mask": _token_mask(batch)}),
    Family("omnigen2", "Omnigen2", {"image_model": "omnigen2", "patch_size": 2, "in_channels": 16,
                                    "hidden_size": 64, "num_layers": 1, "num_refiner_layers": 1,
                                    "num_attention_heads": 2, "num_kv_heads": 1, "multiple_of": 16,
                                    "axes_dim_rope": [8, 12, 12], "axes_lens": [300, 64, 64],
                                    "text_feat_dim": CONTEXT, "timestep_scale": 1000.0},
           (16, 8, 8), "flow", extras=lambda gen, batch: {"attention_mask": _token_mask(batch)}),
    Family("hunyuan-image-2.1", "HunyuanImage21", {"image_model": "hunyuan_video", "in_channels": 64,
                                                   "out_channels": 64, "vec_in_dim": None, "context_in_dim": CONTEXT,
                                                   "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
                                                   "depth_single_blocks": 1, "axes_dim": [16, 16], "theta": 256,
                                                   "patch_size": [1, 1], "qkv_bias": True, "guidance_embed": False,
                                                   "byt5": False, "meanflow": False},
           (64, 4, 4), "flow"),
    Family("stable-cascade-c", "Stable_Cascade_C", {"stable_cascade_stage": "c", "c_in": 16, "c_out": 16,
                                                   "c_r": 16, "c_cond": 32, "c_hidden": [32, 32], "nhead": [2, 2],
                                                   "blocks": [[1, 1], [1, 1]], "c_clip_text": CONTEXT,
                                                   "c_clip_text_pooled": CONTEXT, "c_clip_img": 768, "c_clip_seq": 1},
           (16, 4, 4), "eps", extras=lambda gen, batch: {"pooled_output": _randn(gen, batch, 1, CONTEXT)}),
    Family("svd", "SVD_img2vid", SVD_UNET, (4, 8, 8), "v",
           extras=lambda gen, batch: {"fps": 6, "motion_bucket_id": 127, "augmentation_level": 0}),
    # Image-conditioned variants: the image reaches the model the way ComfyUI's conditioning nodes put it.
    Family("sd21-v", "SD20", _sd_unet(model_channels=64, use_linear_in_transformer=True), (4, 8, 8), "v",
           model_type="V_PREDICTION"),
    Family("sd15-ip2p", "SD15_instructpix2pix", _sd_unet(in_channels=8), (4, 8, 8), "eps",
           extras=lambda gen, batch: {"concat_latent_image": _randn(gen, 1, 4, 8, 8)}),
    Family("sdxl-ip2p", "SDXL_instructpix2pix", {**SDXL_UNET, "in_channels": 8}, (4, 8, 8), "eps",
           extras=_merged(SDXL_EXTRAS, lambda gen, batch: {"concat_latent_image": _randn(gen, 1, 4, 8, 8)})),
    Family("sdxl-refiner", "SDXLRefiner", {**SDXL_UNET, "adm_in_channels": CONTEXT + 5 * 256}, (4, 8, 8), "eps",
           extras=_pooled(CONTEXT, width=64, height=64, aesthetic_score=6.0)),
    # unCLIP: the image embedding (768 wide for -L, 1024 for -H) is noise-augmented into the class embedding.
    Family("sd21-unclip-l", "SD21UnclipL", _sd_unet(model_channels=64, adm=2 * 768, num_classes="sequential",
                                                    use_linear_in_transformer=True), (4, 8, 8), "v",
           model_type="V_PREDICTION", extras=lambda gen, batch: _unclip(gen, 768)),
    Family("sd21-unclip-h", "SD21UnclipH", _sd_unet(model_channels=64, adm=2 * 1024, num_classes="sequential",
                                                    use_linear_in_transformer=True), (4, 8, 8), "v",
           model_type="V_PREDICTION", extras=lambda gen, batch: _unclip(gen, 1024)),
    # Stable Zero123 projects the CLIP image embedding and the camera (4 numbers) to the UNet's context.
    Family("stable-zero123", "Stable_Zero123", _sd_unet(in_channels=8), (4, 8, 8), "eps",
           state_dict={"cc_projection.weight": lambda: _seeded(CONTEXT, CONTEXT + 4),
                       "cc_projection.bias": lambda: _seeded(CONTEXT)},
           extras=lambda gen, batch: {"concat_latent_image": _randn(gen, 1, 4, 8, 8)}, context=CONTEXT + 4),
    Family("sv3d-u", "SV3D_u", {**SVD_UNET, "adm_in_channels": 256}, (4, 8, 8), "v",
           extras=lambda gen, batch: {"concat_latent_image": _randn(gen, 1, 4, 8, 8), "augmentation_level": 0}),
    Family("sv3d-p", "SV3D_p", {**SVD_UNET, "adm_in_channels": 256 + 2 * 512}, (4, 8, 8), "v",
           extras=lambda gen, batch: {"concat_latent_image": _randn(gen, 1, 4, 8, 8), "augmentation_level": 0,
                                      "elevation": 10.0, "azimuth": 30.0}),
    # The x4 upscaler: v-prediction on its own linear β schedule, the noise-augmented low-resolution image
    # concatenated to the latent and its noise level as the class label.
    # Its config fixes four resolution levels (disable_self_attentions has four entries); a 16×16 latent keeps
    # the lowest at 2×2, where GroupNorm still has more than one value per group.
    Family("sd-x4-upscaler", "SD_X4Upscaler", _sd_unet(in_channels=7, use_linear_in_transformer=True,
                                                       channel_mult=[1, 1, 1, 1], num_res_blocks=[1, 1, 1, 1],
                                                       transformer_depth=[0, 0, 0, 1],
                                                       transformer_depth_output=[0, 0, 0, 0, 0, 0, 1, 1]),
           (4, 16, 16), "v",
           model_type="V_PREDICTION",
           extras=lambda gen, batch: {"concat_image": _randn(gen, 1, 3, 16, 16).clamp(-1, 1),
                                      "noise_augmentation": 0.2}),
    Family("flux-inpaint", "FluxInpaint", {**FLUX_DIT, "in_channels": 96, "guidance_embed": True}, (16, 8, 8), "flow",
           extras=lambda gen, batch: {"pooled_output": _randn(gen, batch, CONTEXT), "guidance": 30.0,
                                      "concat_latent_image": _randn(gen, 1, 16, 8, 8), "concat_mask": _square_mask()}),
    Family("wan21-i2v", "WAN21_I2V", _wan("i2v", in_dim=36), (16, 2, 8, 8), "flow",
           extras=_image_to_video(clip_vision=True)),
    Family("wan21-fun-control", "WAN21_FunControl2V", _wan("i2v", in_dim=48), (16, 2, 8, 8), "flow",
           extras=_image_to_video(channels=32, mask=False, clip_vision=True)),
    Family("wan21-camera", "WAN21_Camera", _wan("camera", in_dim=32, in_dim_control_adapter=24), (16, 2, 8, 8),
           "flow", extras=_merged(_image_to_video(clip_vision=True), _camera_embedding)),
    Family("wan22-camera", "WAN22_Camera", _wan("camera_2.2", in_dim=36, in_dim_control_adapter=24), (16, 2, 8, 8),
           "flow", extras=_merged(_image_to_video(), _camera_embedding)),
    Family("wan21-vace", "WAN21_Vace", _wan("vace", vace_layers=1, vace_in_dim=96), (16, 2, 8, 8), "flow",
           extras=lambda gen, batch: {"vace_frames": [_randn(gen, 1, 32, 2, 8, 8)],
                                      "vace_mask": [_first_frame_kept(2, 8, 8).repeat(1, 64, 1, 1, 1)],
                                      "vace_strength": [1.0]}),
    Family("hunyuan-video-i2v", "HunyuanVideoI2V", {**HUNYUAN_VIDEO_DIT, "in_channels": 33}, (16, 2, 8, 8), "flow",
           extras=_merged(_pooled(CONTEXT, guidance=6.0), _image_to_video())),
    Family("hunyuan-video-skyreels-i2v", "HunyuanVideoSkyreelsI2V", {**HUNYUAN_VIDEO_DIT, "in_channels": 32},
           (16, 2, 8, 8), "flow", extras=_merged(_pooled(CONTEXT, guidance=6.0), _image_to_video(mask=False))),
    # Cosmos image-to-video: the image frames sit in the latent, kept by its noise mask (CosmosImageToVideoLatent).
    Family("cosmos-i2v", "CosmosI2V", {**COSMOS_DIT, "in_channels": 17}, (16, 2, 8, 8), "v", sigma_data=0.5,
           noise_mask=lambda batch: _first_frame_kept(2, 8, 8).repeat(batch, 1, 1, 1, 1)),
    Family("cosmos-predict2-i2v", "CosmosI2VPredict2", {**COSMOS_PREDICT2_DIT, "in_channels": 17}, (16, 2, 8, 8),
           "flow", noise_mask=lambda batch: _first_frame_kept(2, 8, 8).repeat(batch, 1, 1, 1, 1)),
    Family("chroma-radiance", "ChromaRadiance", {"image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3,
                                                 "patch_size": 16, "context_in_dim": CONTEXT, "hidden_size": 64,
                                                 "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
                                                 "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True,
                                                 "in_dim": 64, "out_dim": 64, "hidden_dim": 32, "n_layers": 1,
                                                 "nerf_hidden_size": 16, "nerf_mlp_ratio": 2, "nerf_depth": 1,
                                                 "nerf_max_freqs": 8, "nerf_tile_size": 0,
                                                 "nerf_final_head_type": "linear", "nerf_embedder_dtype": None},
           (3, 32, 32), "flow", extras=_pooled(CONTEXT)),
    Family("stable-cascade-b", "Stable_Cascade_B", {"stable_cascade_stage": "b", "c_in": 4, "c_out": 4, "c_r": 16,
                                                   "patch_size": 1, "c_cond": 32, "c_hidden": [32, 32],
                                                   "nhead": [-1, 2], "blocks": [[1, 1], [1, 1]],
                                                   "block_repeat": [[1, 1], [1, 1]], "level_config": ["CT", "CTA"],
                                                   "c_clip": CONTEXT, "c_clip_seq": 1, "c_effnet": 16},
           (4, 8, 8), "eps",
           extras=lambda gen, batch: {"pooled_output": _randn(gen, batch, 1, CONTEXT),
                                      "stable_cascade_prior": _randn(gen, 1, 16, 2, 2)}),
    Family("hunyuan-image-2.1-refiner", "HunyuanImage21Refiner",
           {**HUNYUAN_VIDEO_DIT, "in_channels": 128, "out_channels": 64, "vec_in_dim": None, "patch_size": [1, 1, 1]},
           (64, 1, 4, 4), "flow",
           extras=lambda gen, batch: {"concat_latent_image": _randn(gen, 1, 64, 1, 4, 4), "noise_augmentation": 0.1}),
    # Wan 2.2 S2V, as WanSoundImageToVideo conditions it: audio features (25 encoder layers × width × 4 per
    # latent frame), a reference image, 19 latent frames of motion and the control video.
    Family("wan22-s2v", "WAN22_S2V", _wan("s2v", audio_dim=32, num_audio_token=4, enable_adain=True, cond_dim=16,
                                         audio_inject_layers=[0], adain_mode="attn_norm", framepack_drop_mode="padd"),
           (16, 2, 8, 8), "flow",
           extras=lambda gen, batch: {"audio_embed": _randn(gen, 1, 25, 32, 8),
                                      "reference_latents": [_randn(gen, 1, 16, 1, 8, 8)],
                                      "reference_motion": _randn(gen, 1, 16, 19, 8, 8),
                                      "control_video": _randn(gen, 1, 16, 2, 8, 8)}),
    # Wan HuMo (17B layout: the reference image joins through the concatenated channels), as
    # WanHuMoImageToVideo conditions it: a reference latent and audio windows (latent frames + 1, 8, 5, 1280).
    Family("wan21-humo", "WAN21_HuMo", _wan("humo", in_dim=36, audio_token_num=4), (16, 2, 8, 8), "flow",
           extras=lambda gen, batch: {"reference_latents": [_randn(gen, 1, 16, 1, 8, 8)],
                                      "audio_embed": _randn(gen, 1, 3, 8, 5, 1280)}),
    # Wan 2.2 Animate, as WanAnimateToVideo conditions it without a face video: the reference image
    # (concatenated), CLIP vision and the pose video's latent. (Its face video, 512×512 pixels through the
    # model's fixed-size motion encoder, takes seconds per call on a CPU.)
    Family("wan22-animate", "WAN22_Animate", _wan("animate", in_dim=36), (16, 2, 8, 8), "flow",
           extras=_merged(_image_to_video(clip_vision=True),
                          lambda gen, batch: {"pose_video_latent": _randn(gen, 1, 16, 1, 8, 8)})),
]}

# Families the pack refuses, with a message saying how to run them: Lotus-D maps the image latent to its
# prediction in one call at a fixed timestep (IMG_TO_IMG sampling), which no multistep solver integrates.
REFUSED_FAMILIES = {f.name: f for f in [
    Family("lotus-d", "LotusD", _sd_unet(model_channels=64, adm=4, num_classes="sequential", num_heads=-1,
                                         num_head_channels=64, use_linear_in_transformer=True), (4, 8, 8), "x0"),
]}


def build(family: Family, seed: int = 0):
    """A real ModelPatcher around ``family``'s ComfyUI model class, tiny and seeded."""
    import torch
    import comfy.model_base
    import comfy.supported_models

    comfy_host.import_host()
    config = getattr(comfy.supported_models, family.config)(dict(family.unet_config))
    config.sampling_settings = {**config.sampling_settings, **family.sampling_settings}
    config.set_inference_dtype(torch.float32, None)
    if family.model_type is not None:
        model_type = comfy.model_base.ModelType[family.model_type]
        config.model_type = lambda state_dict, prefix="": model_type
    with torch.no_grad():  # as ComfyUI loads checkpoints: get_model may copy weights into parameters
        model = config.get_model({key: value() if callable(value) else torch.tensor(value)
                                  for key, value in family.state_dict.items()})
    comfy_host._seeded_init_(model.diffusion_model, seed)
    model.eval()
    return comfy_host._patcher(model)


def conditioning(family: Family, batch: int = 1, seed: int = 0):
    """(positive, negative) CONDITIONING with the shapes and extras ``family`` reads."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def one():
        extras = family.extras(gen, batch) if family.extras is not None else {}
        return [[_randn(gen, batch, TOKENS, family.context), extras]]

    return one(), one()


def empty_latent(family: Family, batch: int = 1) -> dict:
    import torch

    latent = {"samples": torch.zeros(batch, *family.latent)}
    if family.noise_mask is not None:
        latent["noise_mask"] = family.noise_mask(batch)
    return latent
