"""Tiny *random* Stable Diffusion and CLIP models built from configs, for the ``smoke`` profile
of ``reward-sd`` (CI, no network, no weights) and the tests.

``--option model=tiny-random`` / ``clip_model=tiny-random`` select them (the smoke profile's
defaults). They are seeded stand-ins that exercise every code path of the task (text
encoder, classifier-free guidance, UNet, VAE decoder, CLIP score, rewards) in seconds;
their images and scores mean nothing. Any other value is loaded with ``from_pretrained``
(a local folder or a hub id), the path the real models take.

Sizes: UNet2DConditionModel with 2 levels (32, 64 channels) and cross-attention of width
32; AutoencoderKL with one 2x down-sampling (latents 4 x size/2 x size/2); CLIP text
encoder and vision tower of 2 layers, width 32, projection 16, images of 32 x 32; a
character-level CLIP tokenizer (lower-case letters and digits) built in memory.
"""

from __future__ import annotations

import string

TINY = "tiny-random"


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=40)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=40, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)


def tiny_sd_pipeline(seed: int = 0):
    """A random ``StableDiffusionPipeline`` (no safety checker), weights seeded by ``seed``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tok = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                            norm_num_groups=8, sample_size=16)
        text = CLIPTextModel(_text_config(len(tok)))
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                    layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=4, norm_num_groups=8)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_clip(seed: int = 0):
    """``(CLIPModel, CLIPProcessor)``, random, seeded by ``seed``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    tok = tiny_tokenizer()
    config = CLIPConfig(
        text_config=_text_config(len(tok)).to_dict(),
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4).to_dict(),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok)
    return model, processor
