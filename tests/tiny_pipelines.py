"""Tiny random-weight Stable Diffusion-family pipelines (SD1-, SD2- and SDXL-like), saved to disk for tests.

They have the real topologies at toy widths, so hook discovery, capture and edits are tested on the same code paths as
the real models, without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ldm.random_init import save_char_tokenizer


def _text_encoder(vocab_size: int, hidden: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=hidden, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=32,
    )


def _scheduler():
    from diffusers import LMSDiscreteScheduler

    return LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def build_sd1(folder: Path, seed: int = 0, attention: str = "self") -> Path:
    """SD v1 layout: 3 cross-attention down blocks + 1 plain, attention mid block, mirrored up: 16 attn1 layers.

    attention: "self" (SD v1), "cross_only" (attn1 attends to the text: no self-attention outside the mid block) or
    "none" (no transformer blocks at all).
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(folder / "_tok", max_length=16)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",) if attention != "none" else ("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3 if attention != "none" else ("UpBlock2D",) * 4,
        mid_block_type="UNetMidBlock2DCrossAttn" if attention != "none" else None,
        only_cross_attention=attention == "cross_only",
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer), 16), tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd2(folder: Path, seed: int = 0) -> Path:
    """SD v2 layout: linear projections in the transformers and per-block head dims."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(folder / "_tok", max_length=16)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=4, cross_attention_dim=24,
        attention_head_dim=(2, 4, 4, 4), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer), 24), tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    """SDXL layout: a plain first block, several transformer layers per block, two text encoders, size conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(folder / "_tok", max_length=16)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=(2, 4, 4),
        use_linear_projection=True, transformer_layers_per_block=(1, 2, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16, cross_attention_dim=32,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer), 16), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(len(tokenizer), 16, projection=True), tokenizer_2=tokenizer,
        unet=unet, scheduler=_scheduler(),
    )
    pipe.save_pretrained(folder)
    return folder


# Diffusion transformers: SD3 (MMDiT joint blocks), Flux (double- and single-stream blocks), PixArt (DiT with
# cross-attention). A 16-channel VAE like SD3's and Flux's, a T5 text encoder, and flow-matching schedulers where the
# real models use them.


def _vae16(shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=1.5305, shift_factor=shift_factor,
    )


def _t5(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=1, eos_token_id=1, decoder_start_token_id=0,
    ))


def build_sd3(folder: Path, seed: int = 0, dual_attention_layers: tuple[int, ...] = ()) -> Path:
    """SD3 layout: an MMDiT (joint image/text attention) with patch size 2, three text encoders, flow matching.

    The last joint block is `context_pre_only` (its text stream ends there), as in the real model.
    dual_attention_layers: blocks with SD3.5's extra image-only self-attention (`attn2`).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(folder / "_tok", max_length=16)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=16, dual_attention_layers=dual_attention_layers,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae16(0.0609),
        text_encoder=_text_encoder(len(tokenizer), 16, projection=True), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(len(tokenizer), 16, projection=True), tokenizer_2=tokenizer,
        text_encoder_3=_t5(len(tokenizer), 32), tokenizer_3=tokenizer,
    )
    pipe.save_pretrained(folder)
    return folder


def build_flux(folder: Path, seed: int = 0) -> Path:
    """FLUX.1-dev layout: double-stream then single-stream blocks on 2x2-packed latents, guidance distilled into an
    embedding (no guidance batch), CLIP pooled + T5 sequence conditioning, flow matching with dynamic shifting."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(folder / "_tok", max_length=16)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=16,
        max_image_seq_len=256,
    )
    pipe = FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=_vae16(0.1159),
        text_encoder=_text_encoder(len(tokenizer), 16), tokenizer=tokenizer,
        text_encoder_2=_t5(len(tokenizer), 32), tokenizer_2=tokenizer,
    )
    pipe.save_pretrained(folder)
    return folder


def build_pixart(folder: Path, seed: int = 0) -> Path:
    """PixArt-Sigma layout: DiT blocks (self-attention, cross-attention to T5, adaLN-single), patch size 2, learned
    variance (8 output channels), the SD VAE's 4 latent channels and an epsilon-prediction scheduler."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(folder / "_tok", max_length=16)
    transformer = PixArtTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=8, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, cross_attention_dim=16, caption_channels=32, norm_num_groups=4,
        interpolation_scale=1, use_additional_conditions=False,
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=_t5(len(tokenizer), 32), vae=_vae(), transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),
    )
    pipe.save_pretrained(folder)
    return folder


def build_marigold_normals(folder: Path, seed: int = 0) -> Path:
    """Marigold normals' layout: a U-Net taking the image latent beside the noisy normals latent (8 channels in), a
    DDIM scheduler predicting v, the empty-prompt text encoder; diffusers' own `MarigoldNormalsPipeline`."""
    from diffusers import DDIMScheduler, MarigoldNormalsPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = save_char_tokenizer(folder / "_tok", max_length=16)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type="v_prediction", timestep_spacing="trailing", set_alpha_to_one=False)
    pipe = MarigoldNormalsPipeline(unet=unet, vae=_vae(), scheduler=scheduler,
                                   text_encoder=_text_encoder(len(tokenizer), 16), tokenizer=tokenizer,
                                   prediction_type="normals", default_denoising_steps=2,
                                   default_processing_resolution=32)
    pipe.save_pretrained(folder)
    return folder
