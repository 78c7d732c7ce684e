"""A tiny FLUX.1 built in code: same classes and wiring as FLUX.1-dev, random weights.

It needs no network and builds in well under a second, so the tests, the local
mode and CI run the real compile/serve flow. Weights come from a fixed seed, so
two builds (e.g. the compile and the eager reference in the tests, or the
tensor-parallel workers of one compile) hold identical modules.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast
from transformers.models.clip.tokenization_clip import bytes_to_unicode

# Its id and "revision" (bumped when anything below changes) are model/keys.py's TINY_MODEL and TINY_REVISION.
SEED = 0

CLIP_MAX_LENGTH = 77  # FLUX.1's CLIP tokenizer length; the pipeline reads it from the tokenizer.
TEXT_HIDDEN = 32
POOLED_HIDDEN = 32

# Words the tokenizers learn whole; anything else still tokenizes (bytes for CLIP, pieces for T5).
_VOCABULARY_WORDS = (
    "a photo of an astronaut riding horse on the moon cat dog sitting in red blue green "
    "car city street at night sunset over mountains painting portrait oil watercolor"
).split()


def transformer_config(guidance_embeds: bool = True) -> dict:
    """FLUX.1-dev's wiring, or FLUX.1-schnell's (no guidance embedding) with `guidance_embeds=False`.
    axes_dims_rope sums to attention_head_dim, as FluxPosEmbed requires."""
    return dict(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        # 8 heads: tensor-parallel degrees up to 8 split them evenly.
        num_attention_heads=8,
        joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=POOLED_HIDDEN,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )


def vae_config() -> dict:
    # Four blocks give the 8x spatial factor of the real VAE; latent channels are
    # the transformer's in_channels / 4 because the pipeline packs 2x2 patches.
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=transformer_config()["in_channels"] // 4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE in CLIP's file format: every byte, then merges that spell whole words."""
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    merges = []
    for word in _VOCABULARY_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            if merged not in vocab:
                merges.append(f"{symbols[0]} {symbols[1]}")
                vocab.append(merged)
            symbols = [merged] + symbols[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as directory:
        vocab_file, merges_file = Path(directory, "vocab.json"), Path(directory, "merges.txt")
        vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5TokenizerFast:
    """A SentencePiece-style Unigram model trained here, wired like T5's (</s> appended, <pad> = 0)."""
    special_tokens = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=100, special_tokens=special_tokens, unk_token="<unk>", show_progress=False
    )
    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator([" ".join(_VOCABULARY_WORDS)], trainer=trainer)
    # The trainer's piece inventory is stable, but it breaks score ties in hash order, so
    # its scores and ids differ between builds. Re-score each piece by its frequency in
    # the corpus and number pieces canonically (specials first, then by score and text).
    corpus = "".join("\u2581" + word for word in _VOCABULARY_WORDS)
    pieces = [piece for piece, _ in json.loads(trained.to_str())["model"]["vocab"] if piece not in special_tokens]
    counts = {piece: corpus.count(piece) for piece in pieces}
    total = sum(counts.values())
    learned = sorted(((piece, math.log(count / total)) for piece, count in counts.items()), key=lambda e: (-e[1], e[0]))
    tokenizer = Tokenizer(
        models.Unigram([(token, 0.0) for token in special_tokens] + learned, unk_id=special_tokens.index("<unk>"))
    )
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", special_tokens.index("</s>"))]
    )
    return T5TokenizerFast(tokenizer_object=tokenizer, extra_ids=0)


def _seeded(build, seed_offset: int) -> torch.nn.Module:
    # fork_rng keeps the caller's global RNG untouched; eval() because modules built
    # from configs start in training mode (dropout) and would not reproduce.
    with torch.random.fork_rng():
        torch.manual_seed(SEED + seed_offset)
        return build().eval()


def clip_text_config() -> CLIPTextConfig:
    tokenizer = clip_tokenizer()
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=POOLED_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=POOLED_HIDDEN,
        # CLIP pools the hidden state at the end-of-text token: tell it which id that is.
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )


def t5_config() -> T5Config:
    return T5Config(
        vocab_size=len(t5_tokenizer()),
        d_model=TEXT_HIDDEN,
        d_kv=4,
        d_ff=64,
        num_layers=2,
        # 8 heads and a feed-forward of 64: tensor-parallel degrees up to 8 split both evenly.
        num_heads=8,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )


def clip_text_model() -> CLIPTextModel:
    return _seeded(lambda: CLIPTextModel(clip_text_config()), 1)


def t5_encoder_model() -> T5EncoderModel:
    return _seeded(lambda: T5EncoderModel(t5_config()), 2)


def transformer(guidance_embeds: bool = True) -> FluxTransformer2DModel:
    return _seeded(lambda: FluxTransformer2DModel(**transformer_config(guidance_embeds)), 3)


def vae() -> AutoencoderKL:
    return _seeded(lambda: AutoencoderKL(**vae_config()), 4)


def scheduler(dynamic_shifting: bool = True) -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler settings (shifted by image sequence length), or FLUX.1-schnell's (a fixed
    shift of 1) with `dynamic_shifting=False`."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if dynamic_shifting else 1.0,
        use_dynamic_shifting=dynamic_shifting,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def pipeline(dtype: torch.dtype, timestep_distilled: bool = False) -> FluxPipeline:
    """The eager tiny pipeline (FLUX.1-dev's family, or FLUX.1-schnell's): the reference the compiled
    artifacts are checked against."""
    return FluxPipeline(
        scheduler=scheduler(dynamic_shifting=not timestep_distilled),
        vae=vae().to(dtype),
        text_encoder=clip_text_model().to(dtype),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder_model().to(dtype),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer(guidance_embeds=not timestep_distilled).to(dtype),
    )


# A LoRA adapter in diffusers' format (what FluxPipeline.lora_state_dict reads): rank-4 updates of the
# transformer's attention projections and of CLIP's query and value projections.
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_RANK = 4
_LORA_TARGETS = {"transformer": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
                 "text_encoder": ("self_attn.q_proj", "self_attn.v_proj")}


def lora_adapter(seed: int = 5) -> dict[str, torch.Tensor]:
    """A tiny LoRA adapter's tensors, by diffusers' names (`<component>.<module>.lora_A/lora_B.weight`)."""
    generator = torch.Generator().manual_seed(seed)
    modules = {"transformer": transformer(), "text_encoder": clip_text_model()}
    adapter = {}
    for component, suffixes in _LORA_TARGETS.items():
        for name, module in modules[component].named_modules():
            if name.endswith(suffixes):
                prefix = f"{component}.{name}"
                adapter[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, module.in_features, generator=generator) / 4
                adapter[f"{prefix}.lora_B.weight"] = torch.randn(module.out_features, LORA_RANK, generator=generator) / 4
    return adapter
