#!/usr/bin/env python3
"""Check a diffusers checkpoint as adp runs it against diffusers itself.

`adp diffusion-check --diffusion DIR --inputs IN --out OUT` runs the text encoder, UNet and VAE of a
diffusers folder through an adp plugin on the inputs of IN and writes OUT. This script computes the
same outputs from the same folder and inputs with diffusers + transformers (CPU, float32) and
compares them with OUT, printing max |diff|, max |reference| and the relative error of every output.
It exits 1 if any output is beyond its tolerance (the conformance suite's, conformance-tests/src/
tolerance.rs): 1e-4 x max |reference| for forward values, 1e-3 x for the loss gradient.

    /root/.cache/adp/golden-venv/bin/python tools/check_diffusion.py \
        --diffusion DIR --inputs in.safetensors --adp out.safetensors [--save ref.safetensors]

Inputs (see README, `adp diffusion-check`): metadata `prompts` (JSON list of strings; `placeholder`,
default "<c>", marks where tensor `concept` replaces the token embedding), tensors `images`
[N,3,S,S] in [0,1], `latents` [N,C,s,s], `timesteps` [N] (int), `noise` [N,C,s,s]. Tokenisation:
the folder's CLIPTokenizer, start token, the text's ids with one placeholder id per `<c>`, end
token, padded with the tokenizer's pad token to 77.
"""
import argparse
import json
import os
import sys

import diffusers
import torch
import transformers
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

FORWARD = 1e-4
GRADIENT = 1e-3
CONTEXT = 77


class Diffusion:
    def __init__(self, folder):
        load = dict(low_cpu_mem_usage=False)
        self.vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), **load).eval().float()
        self.unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), **load).eval().float()
        self.text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval().float()
        self.scheduler = DDPMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
        self.tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        for m in (self.vae, self.unet, self.text_encoder):
            m.requires_grad_(False)
        self.scaling = self.vae.config.scaling_factor
        # The concept's id: one past the vocabulary, looked up as 0 and replaced.
        self.placeholder_id = self.text_encoder.config.vocab_size

    def ids(self, prompt, placeholder):
        tok = self.tokenizer
        ids = [tok.bos_token_id]
        for i, part in enumerate(prompt.split(placeholder)):
            if i > 0:
                ids.append(self.placeholder_id)
            ids.extend(tok(part, add_special_tokens=False).input_ids)
        ids.append(tok.eos_token_id)
        if len(ids) > CONTEXT:
            sys.exit(f"prompt {prompt!r} is {len(ids)} tokens, more than {CONTEXT}")
        return ids + [tok.pad_token_id] * (CONTEXT - len(ids))

    def conditioning(self, prompts, placeholder, concept):
        ids = torch.tensor([self.ids(p, placeholder) for p in prompts], dtype=torch.int64)
        mask = ids == self.placeholder_id
        emb = self.text_encoder.get_input_embeddings()

        def substitute(_mod, _inp, out):
            if concept is None:
                return out
            return torch.where(mask.unsqueeze(-1), concept.to(out.dtype).expand_as(out), out)

        hook = emb.register_forward_hook(substitute)
        try:
            return self.text_encoder(input_ids=ids.masked_fill(mask, 0)).last_hidden_state
        finally:
            hook.remove()

    def encode(self, images01):
        return self.scaling * self.vae.encode(2 * images01 - 1).latent_dist.mean

    def decode(self, latents):
        return (self.vae.decode(latents / self.scaling).sample / 2 + 0.5).clamp(0, 1)

    def loss(self, images, prompts, placeholder, concept, timesteps, noise):
        z0 = self.encode(images)
        zt = self.scheduler.add_noise(z0, noise, timesteps)
        kind = self.scheduler.config.prediction_type
        target = noise if kind == "epsilon" else self.scheduler.get_velocity(z0, noise, timesteps)
        cond = self.conditioning(prompts, placeholder, concept)
        pred = self.unet(zt, timesteps, encoder_hidden_states=cond).sample
        return F.mse_loss(pred, target, reduction="mean")


def reference(d, inputs, meta):
    """Every output adp writes for these inputs, from diffusers."""
    out = {}
    placeholder = meta.get("placeholder", "<c>")
    prompts = json.loads(meta["prompts"]) if "prompts" in meta else None
    concept = inputs.get("concept")
    images, latents, timesteps, noise = (inputs.get(k) for k in ("images", "latents", "timesteps", "noise"))
    with torch.no_grad():
        cond = d.conditioning(prompts, placeholder, concept) if prompts else None
        if cond is not None:
            out["conditioning"] = cond
        if images is not None:
            out["vae_latents"] = d.encode(images)
            out["vae_decoded"] = d.decode(out["vae_latents"])
        if latents is not None:
            out["latents_decoded"] = d.decode(latents)
            if timesteps is not None and cond is not None:
                out["unet_prediction"] = d.unet(latents, timesteps.long(), encoder_hidden_states=cond).sample
    if noise is not None:
        c = None if concept is None else concept.clone().requires_grad_(True)
        loss = d.loss(images, prompts, placeholder, c, timesteps.long(), noise)
        out["denoising_loss"] = loss.detach().reshape(1)
        if c is not None:
            loss.backward()
            out["denoising_loss_grad"] = c.grad.detach()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--diffusion", required=True, help="the diffusers folder adp ran")
    ap.add_argument("--inputs", required=True, help="the inputs given to adp diffusion-check")
    ap.add_argument("--adp", required=True, help="the outputs adp diffusion-check wrote")
    ap.add_argument("--save", help="also write diffusers' outputs here (safetensors)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()

    d = Diffusion(args.diffusion)
    inputs = load_file(args.inputs)
    with safe_open(args.inputs, "pt") as f:
        meta = f.metadata() or {}
    want = reference(d, inputs, meta)
    got = load_file(args.adp)
    if args.save:
        save_file({k: v.contiguous() for k, v in want.items()}, args.save)

    failed = False
    print(f"{'output':22s} {'shape':18s} {'max|diff|':>10s} {'max|ref|':>10s} {'rel':>10s} {'tol':>7s}")
    for name in sorted(set(want) | set(got)):
        if name not in got or name not in want:
            print(f"{name:22s} only in {'diffusers' if name in want else 'adp'}'s outputs")
            failed = True
            continue
        w, g = want[name].double(), got[name].double()
        if w.shape != g.shape:
            print(f"{name:22s} shape adp {list(g.shape)} vs diffusers {list(w.shape)}")
            failed = True
            continue
        diff, mag = (g - w).abs().max().item(), w.abs().max().item()
        rel = diff / max(mag, 1e-6)
        tol = GRADIENT if name.endswith("_grad") else FORWARD
        ok = rel <= tol
        failed |= not ok
        print(f"{name:22s} {str(list(w.shape)):18s} {diff:10.3e} {mag:10.3e} {rel:10.3e} {tol:7.0e}"
              f"{'' if ok else '  FAIL'}")
    print("FAILED" if failed else "all outputs within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
