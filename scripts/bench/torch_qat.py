#!/usr/bin/python3
"""PyTorch fake-quant QAT training speed of qatc's testmodels architecture.

An optional comparison for `qatc finetune` (issue 4): it trains, in PyTorch,
the architecture of testmodels.Base() (or Tiny) with NeurST's fake
quantization and prints the training throughput as JSON. qatc itself never
needs Python; this script needs only Debian's python3-torch.

    /usr/bin/python3 scripts/bench/torch_qat.py --config base --threads 2
    /usr/bin/python3 scripts/bench/torch_qat.py --config base --threads 2 --no-quant
    /usr/bin/python3 scripts/bench/torch_qat.py --selftest

The model follows testmodels/doc.go: a pre-norm encoder-decoder with shared
embeddings (lookups scaled by sqrt(d), logits from the transposed table plus
a bias), tensor2tensor sinusoidal positions, final LayerNorms (eps 1e-6),
ReLU feed-forward blocks, padding and causal masks added to the attention
logits. Quantizers follow shared/docs/quantization-semantics.md: one
learnable clip per tensor, straight-through gradient with NeurST's clip
rule, on every dense kernel, the embedding table, LayerNorm outputs feeding
dense layers, the Q/K/V dense outputs, the attention probabilities
(softmax kind), the attention context and the ReLU output (relu kind).
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time


def runtime_env(argv):
    """Sets the thread settings that libgomp and OpenBLAS read only once, when
    torch is loaded, from --threads and --omp-wait-policy in argv; variables
    already in the environment win. Returns what was set, for the report."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--omp-wait-policy", choices=("passive", "active", "env"), default="passive")
    a, _ = p.parse_known_args(argv)
    if a.threads >= 1:
        # OpenBLAS's own pthreads would otherwise number the cores.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(a.threads))
    if a.omp_wait_policy != "env":
        # libgomp's default spins at every barrier, which on a loaded
        # machine costs milliseconds per operator (see README.md).
        os.environ.setdefault("OMP_WAIT_POLICY", a.omp_wait_policy.upper())
    return {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")}


if __name__ == "__main__":
    ENV = runtime_env(sys.argv[1:])

import torch  # noqa: E402 (after runtime_env, which must run first)
import torch.nn.functional as F  # noqa: E402

PAD, BOS, EOS = 0, 2, 3
LN_EPS = 1e-6
MASK_BIAS = -1e9
# Clips at or below TINY act as TINY, as qatc's Max(clip, tiny) does.
TINY = 1e-8

CONFIGS = {
    "tiny": dict(vocab=64, hidden=32, ffn=64, heads=4, enc_layers=2, dec_layers=2, max_len=64),
    "base": dict(vocab=8000, hidden=512, ffn=2048, heads=8, enc_layers=6, dec_layers=6, max_len=1024),
}

# Quantizer kinds.
WEIGHT, ACT, RELU, SOFTMAX = "weight", "act", "relu", "softmax"


def grid(clip, kind):
    """The range [lo, hi] and step of a quantizer of kind with clip
    (a float; ignored for softmax), and its integer bounds."""
    if kind == SOFTMAX:
        return 0.0, 255.0 / 256.0, 1.0 / 256.0, 0, 255
    c = max(clip, TINY)
    if kind == RELU:
        return 0.0, c, c / 255.0, 0, 255
    return -c * 128.0 / 127.0, c, c / 127.0, -128, 127


def fake_quant_reference(x, clip, kind):
    """The forward rule written out, round(clamp(x, lo, hi)/step)*step; the
    selftest checks FakeQuant against it."""
    lo, hi, step, _, _ = grid(float(clip) if clip is not None else 0.0, kind)
    return torch.round(torch.clamp(x, lo, hi) / step) * step


class FakeQuant(torch.autograd.Function):
    """NeurST fake quantization y = round(clamp(x, lo, hi)/step)*step.

    Signed kinds (weight, act): c = max(clip, tiny), range [-c*128/127, c],
    step c/127. relu: range [0, c], step c/255. softmax: fixed [0, 255/256],
    step 1/256, clip ignored. Backward: dx = g inside the range (bounds
    included), 0 outside; dclip = sum(g above) - 128/127 * sum(g below)
    (signed) or sum(g above) (relu).

    The clamped tensor is rounded by PyTorch's fused per-tensor fake-quant
    kernel (one pass, round half to even as ONNX QuantizeLinear does), and
    the backward uses whole-tensor vectorised passes only, so that this
    baseline is as quick as plain PyTorch reasonably makes it.
    """

    @staticmethod
    def forward(ctx, x, clip, kind):
        c = float(clip) if kind != SOFTMAX else 0.0
        lo, hi, step, qmin, qmax = grid(c, kind)
        xc = torch.clamp(x, lo, hi)
        y = torch.fake_quantize_per_tensor_affine(
            xc, torch.tensor([step]), torch.zeros(1, dtype=torch.int32), qmin, qmax)
        inside = xc == x
        ctx.save_for_backward(x, inside)
        ctx.kind = kind
        ctx.clip_live = kind != SOFTMAX and c > TINY
        return y

    @staticmethod
    def backward(ctx, g):
        x, inside = ctx.saved_tensors
        dx = g * inside
        dclip = None
        if ctx.needs_input_grad[1]:
            if not ctx.clip_live:
                dclip = torch.zeros((), dtype=g.dtype)
            else:
                # Outside the range, above means x > 0 and below x < 0 (every
                # range holds 0), so with w = 1 above and -r below (r = 128/127
                # signed, 0 relu), dclip = sum(gout*w) = (1-r)/2*sum(gout) +
                # (1+r)/2*sum(gout*sign(x)): two reductions, no indexing.
                gout = g - dx
                r = 128.0 / 127.0 if ctx.kind in (WEIGHT, ACT) else 0.0
                dclip = (1 - r) / 2 * gout.sum() + (1 + r) / 2 * torch.dot(gout.reshape(-1), x.sign().reshape(-1))
        return dx, dclip, None


def sinusoids(max_len, d):
    """tensor2tensor position table: sin half then cos half, timescales 1..1e4."""
    n = d // 2
    inc = math.log(10000.0) / max(n - 1, 1)
    inv = torch.exp(-torch.arange(n, dtype=torch.float64) * inc)
    a = torch.arange(max_len, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1).float()


class Transformer(torch.nn.Module):
    """testmodels' pre-norm encoder-decoder, optionally fake-quantized."""

    def __init__(self, vocab, hidden, ffn, heads, enc_layers, dec_layers, max_len,
                 quant=True, weight_clip=1.0, act_clip=16.0, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.d, self.heads, self.quant = hidden, heads, quant
        self.params = torch.nn.ParameterDict()
        self.weight_clips = torch.nn.ParameterDict()
        self.act_clips = torch.nn.ParameterDict()
        self.weight_clip, self.act_clip = weight_clip, act_clip
        self.register_buffer("positions", sinusoids(max_len, hidden))

        def param(name, t):
            self.params[key(name)] = torch.nn.Parameter(t)

        def uniform(shape, lo, hi):
            return torch.rand(shape, generator=g) * (hi - lo) + lo

        def dense(scope, n_in, n_out):
            a = math.sqrt(6.0 / (n_in + n_out))
            param(scope + "/kernel", uniform((n_in, n_out), -a, a))
            param(scope + "/bias", uniform((n_out,), -0.05, 0.05))

        def ln(scope):
            param(scope + "/gamma", uniform((hidden,), 0.9, 1.1))
            param(scope + "/beta", uniform((hidden,), -0.1, 0.1))

        def attention(scope):
            ln(scope + "/ln")
            for p in ("q", "k", "v", "output"):
                dense(scope + "/" + p, hidden, hidden)

        def ffn_block(scope):
            ln(scope + "/ln")
            dense(scope + "/dense1", hidden, ffn)
            dense(scope + "/dense2", ffn, hidden)

        param("shared_embedding", torch.randn((vocab, hidden), generator=g) / math.sqrt(hidden))
        for i in range(enc_layers):
            attention(f"encoder/layer_{i}/self_attention")
            ffn_block(f"encoder/layer_{i}/ffn")
        ln("encoder/ln")
        for i in range(dec_layers):
            attention(f"decoder/layer_{i}/self_attention")
            attention(f"decoder/layer_{i}/encdec_attention")
            ffn_block(f"decoder/layer_{i}/ffn")
        ln("decoder/ln")
        param("softmax/bias", uniform((vocab,), -0.05, 0.05))
        self.enc_layers, self.dec_layers = enc_layers, dec_layers

        if quant:
            # Create every clip now, by a dry run, so that the optimizer
            # sees them all from the start.
            self._creating = True
            with torch.no_grad():
                self(torch.full((1, 2), 4), torch.full((1, 2), 4))
            self._creating = False

    def p(self, name):
        return self.params[key(name)]

    def q(self, name, x, kind):
        """x fake-quantized by the quantizer called name (a no-op without quant)."""
        if not self.quant:
            return x
        if kind == SOFTMAX:
            return FakeQuant.apply(x, None, SOFTMAX)
        clips = self.weight_clips if kind == WEIGHT else self.act_clips
        k = key(name)
        if k not in clips:
            if not getattr(self, "_creating", False):
                raise KeyError(f"quantizer {name} was not created by the dry run")
            init = self.weight_clip if kind == WEIGHT else self.act_clip
            clips[k] = torch.nn.Parameter(torch.tensor(float(init)))
        return FakeQuant.apply(x, clips[k], kind)

    def kernel(self, scope):
        return self.q(scope + "/kernel", self.p(scope + "/kernel"), WEIGHT)

    def dense(self, scope, x):
        return torch.matmul(x, self.kernel(scope)) + self.p(scope + "/bias")

    def layer_norm(self, scope, x):
        return F.layer_norm(x, (self.d,), self.p(scope + "/gamma"), self.p(scope + "/beta"), LN_EPS)

    def ln_for_dense(self, scope, x):
        """LayerNorm whose output feeds dense layers: quantized (act)."""
        return self.q(scope + "/output", self.layer_norm(scope, x), ACT)

    def attention(self, scope, x, mem, bias):
        b, n, d = x.shape
        h = self.heads
        dh = d // h
        q = self.q(scope + "/q/BiasAdd", self.dense(scope + "/q", x), ACT)
        k = self.q(scope + "/k/BiasAdd", self.dense(scope + "/k", mem), ACT)
        v = self.q(scope + "/v/BiasAdd", self.dense(scope + "/v", mem), ACT)
        q = q.view(b, n, h, dh).transpose(1, 2) * (1.0 / math.sqrt(dh))
        k = k.view(b, -1, h, dh).permute(0, 2, 3, 1)
        v = v.view(b, -1, h, dh).transpose(1, 2)
        probs = torch.softmax(torch.matmul(q, k) + bias, dim=-1)
        probs = self.q(scope + "/probs", probs, SOFTMAX)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, d)
        ctx = self.q(scope + "/context_merged", ctx, ACT)
        return self.dense(scope + "/output", ctx)

    def ffn(self, scope, x):
        hdn = torch.relu(self.dense(scope + "/dense1", x))
        hdn = self.q(scope + "/relu", hdn, RELU)
        return self.dense(scope + "/dense2", hdn)

    def forward(self, src, tgt):
        table = self.q("shared_embedding", self.p("shared_embedding"), WEIGHT)
        scale = math.sqrt(self.d)
        src_bias = (src == PAD).float().mul(MASK_BIAS)[:, None, None, :]

        x = table[src] * scale + self.positions[: src.shape[1]]
        for i in range(self.enc_layers):
            s = f"encoder/layer_{i}"
            y = self.ln_for_dense(s + "/self_attention/ln", x)
            x = x + self.attention(s + "/self_attention", y, y, src_bias)
            x = x + self.ffn(s + "/ffn", self.ln_for_dense(s + "/ffn/ln", x))
        enc = self.ln_for_dense("encoder/ln", x)

        n = tgt.shape[1]
        causal = torch.triu(torch.full((n, n), MASK_BIAS), diagonal=1)
        x = table[tgt] * scale + self.positions[:n]
        for i in range(self.dec_layers):
            s = f"decoder/layer_{i}"
            y = self.ln_for_dense(s + "/self_attention/ln", x)
            x = x + self.attention(s + "/self_attention", y, y, causal)
            y = self.ln_for_dense(s + "/encdec_attention/ln", x)
            x = x + self.attention(s + "/encdec_attention", y, enc, src_bias)
            x = x + self.ffn(s + "/ffn", self.ln_for_dense(s + "/ffn/ln", x))
        dec = self.ln_for_dense("decoder/ln", x)
        return torch.matmul(dec, table.t()) + self.p("softmax/bias")

    def loss(self, src, tgt, labels, smoothing=0.1, weight_l2=0.001, act_l2=0.01):
        """Token-mean label-smoothed cross-entropy (PyTorch's definition, pad
        ignored) plus NeurST's L2 on the clips; returns (loss, cross-entropy)."""
        logits = self(src, tgt)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=PAD, label_smoothing=smoothing)
        loss = ce
        if self.quant:
            loss = loss + weight_l2 * sum(c * c for c in self.weight_clips.values())
            loss = loss + act_l2 * sum(c * c for c in self.act_clips.values())
        return loss, ce


def key(name):
    """The ParameterDict key of a NeurST-style name such as
    encoder/layer_0/ffn/dense1/kernel: '/' becomes '__', so that keys are
    plain identifiers (PyTorch refuses '.', which these names never hold)."""
    return name.replace("/", "__")


def random_batch(vocab, batch, src_len, tgt_len, gen, ragged=False):
    """Random ids in [EOS+1, vocab): sources end with EOS, targets start with
    BOS, labels are the targets shifted left ending with EOS. With ragged,
    rows other than the first are shorter with probability 1/2 and padded,
    as testmodels.RandomBatch does."""
    src = torch.randint(EOS + 1, vocab, (batch, src_len), generator=gen)
    body = torch.randint(EOS + 1, vocab, (batch, tgt_len), generator=gen)
    src[:, -1] = EOS
    tgt = torch.cat([torch.full((batch, 1), BOS), body[:, :-1]], dim=1)
    labels = body.clone()
    labels[:, -1] = EOS
    if ragged:
        for r in range(1, batch):
            if torch.rand((), generator=gen) < 0.5 and src_len > 1:
                n = int(torch.randint(1, src_len, (), generator=gen))
                src[r, n - 1], src[r, n:] = EOS, PAD
            if torch.rand((), generator=gen) < 0.5 and tgt_len > 1:
                n = int(torch.randint(1, tgt_len, (), generator=gen))
                labels[r, n - 1], labels[r, n:], tgt[r, n:] = EOS, PAD, PAD
    return src, tgt, labels


def make_optimizer(model, lr):
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)


def bench(args):
    torch.manual_seed(args.seed)
    cfg = CONFIGS[args.config]
    batch = args.batch
    if args.batch_tokens:
        # qatc's batcher bounds rows x longest sentence by --batch-tokens.
        batch = max(1, args.batch_tokens // max(args.src_len, args.tgt_len))
    model = Transformer(**cfg, quant=not args.no_quant, seed=args.seed)
    opt = make_optimizer(model, args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    times, tokens, losses = [], [], []
    load_start = os.getloadavg()[0]
    cpu = 0.0
    for step in range(args.warmup + args.steps):
        src, tgt, labels = random_batch(cfg["vocab"], batch, args.src_len, args.tgt_len, gen, args.ragged)
        t0, c0 = time.perf_counter(), cpu_seconds()
        opt.zero_grad(set_to_none=True)
        loss, ce = model.loss(src, tgt, labels)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            cpu += cpu_seconds() - c0
            times.append(dt)
            tokens.append(int((labels != PAD).sum()))
            losses.append(float(ce))
        if args.verbose:
            print(f"step {step}: loss {float(loss):.4f} ce {float(ce):.4f} {dt:.3f}s", file=sys.stderr)
    n_params = sum(p.numel() for p in model.params.values())
    return {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "config": args.config,
        "params": n_params,
        "quant": not args.no_quant,
        "weight_quantizers": len(model.weight_clips),
        "act_quantizers": len(model.act_clips),
        "env": ENV,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "batch": batch,
        "src_len": args.src_len,
        "tgt_len": args.tgt_len,
        "ragged": args.ragged,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "target_tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": sum(tokens) / sum(times),
        "seconds_per_step_median": statistics.median(times),
        "seconds_per_step_min": min(times),
        "seconds_per_step_max": max(times),
        "cpu_seconds_per_step": cpu / args.steps,
        "loadavg_1min_start_end": [load_start, os.getloadavg()[0]],
        "ce_first_timed": losses[0],
        "ce_last": losses[-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def cpu_seconds():
    """User plus system CPU time of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def selftest():
    """Checks the fake-quant gradients on hand-computed cases and that a tiny
    QAT model learns a copy task. Raises AssertionError on failure."""
    checks = []

    # Signed kind, clip 1: range [-128/127, 1].
    x = torch.tensor([-2.0, -0.5, 0.3, 1.5], requires_grad=True)
    clip = torch.tensor(1.0, requires_grad=True)
    y = FakeQuant.apply(x, clip, ACT)
    y.backward(torch.ones(4))
    # -0.5 lies on a tie of the grid (-63.5 steps), so its value is left out.
    want_y = torch.tensor([-128 / 127, 38 / 127, 1.0])
    assert torch.allclose(y[[0, 2, 3]], want_y, atol=1e-7), f"forward {y.tolist()}"
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0], f"dx {x.grad.tolist()}"
    assert abs(float(clip.grad) - (1 - 128 / 127)) < 1e-6, f"dclip {float(clip.grad)} != {1 - 128 / 127}"
    checks.append("signed STE and clip gradient")

    # Weighted upstream gradient and the bounds themselves (inside).
    x = torch.tensor([-3.0, -128 / 127, 1.0, 2.0, 0.1], requires_grad=True)
    clip = torch.tensor(1.0, requires_grad=True)
    FakeQuant.apply(x, clip, WEIGHT).backward(torch.tensor([2.0, 3.0, 5.0, 7.0, 11.0]))
    assert x.grad.tolist() == [0.0, 3.0, 5.0, 0.0, 11.0], f"dx {x.grad.tolist()}"
    assert abs(float(clip.grad) - (7 - 2 * 128 / 127)) < 1e-5, f"dclip {float(clip.grad)}"
    checks.append("weighted gradient, bounds inside")

    # relu kind, clip 2: range [0, 2], step 2/255; only above counts.
    x = torch.tensor([-1.0, 0.5, 3.0], requires_grad=True)
    clip = torch.tensor(2.0, requires_grad=True)
    y = FakeQuant.apply(x, clip, RELU)
    y.backward(torch.ones(3))
    assert torch.allclose(y, torch.tensor([0.0, round(0.5 * 127.5) / 127.5, 2.0])), f"relu forward {y.tolist()}"
    assert x.grad.tolist() == [0.0, 1.0, 0.0] and float(clip.grad) == 1.0, "relu gradients"
    checks.append("relu kind")

    # softmax kind: fixed grid 1/256 on [0, 255/256]; 1.0 lies outside.
    x = torch.tensor([0.0, 0.5 + 1 / 1024, 1.0], requires_grad=True)
    y = FakeQuant.apply(x, None, SOFTMAX)
    y.backward(torch.ones(3))
    assert y.tolist() == [0.0, 0.5, 255 / 256], f"softmax forward {y.tolist()}"
    assert x.grad.tolist() == [1.0, 1.0, 0.0], f"softmax dx {x.grad.tolist()}"
    checks.append("softmax kind")

    # The fused kernels against the rule written out, on random data.
    gen = torch.Generator().manual_seed(0)
    for kind, c in ((WEIGHT, 0.7), (ACT, 3.0), (RELU, 2.5), (SOFTMAX, None)):
        x = torch.randn(4096, generator=gen) * 2
        if kind == RELU:
            x = x.abs()
        elif kind == SOFTMAX:
            x = torch.rand(4096, generator=gen) * 1.1
        x.requires_grad_(True)
        clip = torch.tensor(c, requires_grad=True) if c is not None else None
        g = torch.randn(4096, generator=gen)
        y = FakeQuant.apply(x, clip, kind)
        y.backward(g)
        lo, hi, step, _, _ = grid(c or 0.0, kind)
        ref = fake_quant_reference(x.detach(), c, kind)
        off = int(((y - ref).abs() > step * 1e-3).sum())
        assert off == 0, f"{kind}: {off} of 4096 values off the reference grid"
        xd, gd = x.detach().double(), g.double()
        want_dx = gd * ((xd >= lo) & (xd <= hi))
        assert torch.equal(x.grad.double(), want_dx), f"{kind}: dx differs from the reference"
        if clip is not None:
            want = float((gd * (xd > hi)).sum())
            if kind != RELU:
                want -= 128 / 127 * float((gd * (xd < lo)).sum())
            assert abs(float(clip.grad) - want) < 1e-4 * (1 + abs(want)), f"{kind}: dclip {float(clip.grad)} != {want}"
    checks.append("fused forward and backward match the written-out rule for every kind")

    # Gradient of the whole model against finite differences would need
    # float64 and a quantizer-free path; the STE makes the quantized model
    # piecewise constant, so check that training works instead: a tiny QAT
    # model learns to copy its source within 30 steps.
    torch.manual_seed(0)
    model = Transformer(**CONFIGS["tiny"], quant=True, seed=0)
    n_quant = (len(model.weight_clips), len(model.act_clips))
    # 2+2 layers: 6 kernels per encoder layer, 10 per decoder layer, plus the table.
    assert n_quant[0] == 2 * 6 + 2 * 10 + 1, f"weight quantizers {n_quant[0]}"
    # Encoder layer: 2 LN, q/k/v, context, relu = 7; decoder: 3 LN, 2x(q/k/v, context), relu = 12; 2 final LNs.
    assert n_quant[1] == 2 * 7 + 2 * 12 + 2, f"activation quantizers {n_quant[1]}"
    opt = make_optimizer(model, 3e-3)
    gen = torch.Generator().manual_seed(0)
    first = last = None
    for step in range(30):
        src, _, _ = random_batch(64, 16, 8, 8, gen, ragged=True)
        # Copy task: the target is the source (EOS and padding included).
        labels = src.clone()
        tgt = torch.cat([torch.full((16, 1), BOS), labels[:, :-1]], dim=1)
        tgt[labels == PAD] = PAD
        opt.zero_grad(set_to_none=True)
        loss, ce = model.loss(src, tgt, labels)
        loss.backward()
        opt.step()
        if step == 0:
            first = float(ce)
            grads = [c.grad for c in model.act_clips.values()]
            assert all(g is not None for g in grads), "an activation clip got no gradient"
        last = float(ce)
    assert last < 0.8 * first, f"copy task: cross-entropy {first:.4f} -> {last:.4f}, want a drop of 20% or more"
    checks.append(f"tiny copy task cross-entropy {first:.3f} -> {last:.3f} in 30 steps")
    return {"selftest": "ok", "checks": checks, "torch_version": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="base", help="testmodels preset")
    ap.add_argument("--batch", type=int, default=16, help="sentences per batch")
    ap.add_argument("--src-len", type=int, default=32, help="source length (EOS included)")
    ap.add_argument("--tgt-len", type=int, default=32, help="target length")
    ap.add_argument("--batch-tokens", type=int, default=0,
                    help="set the batch as qatc does: rows = N // max(src-len, tgt-len) (overrides --batch)")
    ap.add_argument("--ragged", action="store_true", help="pad about half the rows, as testmodels.RandomBatch does")
    ap.add_argument("--threads", type=int, default=2, help="intra- and inter-op threads (and OpenBLAS's)")
    ap.add_argument("--omp-wait-policy", choices=("passive", "active", "env"), default="passive",
                    help="OMP_WAIT_POLICY for libgomp; env leaves the environment's (libgomp: spin, then sleep)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-quant", action="store_true", help="plain fp32 training, no fake quantization")
    ap.add_argument("--selftest", action="store_true", help="check the quantizer gradients and a tiny copy task, then exit")
    ap.add_argument("--verbose", action="store_true", help="print each step's loss and time to stderr")
    args = ap.parse_args()
    for name in ("batch", "src_len", "tgt_len", "threads", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} is {getattr(args, name)}: it must be at least 1")
    if args.warmup < 0:
        ap.error(f"--warmup is {args.warmup}: it must be 0 or more")
    if args.src_len > CONFIGS[args.config]["max_len"] or args.tgt_len > CONFIGS[args.config]["max_len"]:
        ap.error(f"lengths above the {args.config} model's {CONFIGS[args.config]['max_len']} positions")
    # Inter-op threads can only be set before any parallel work starts.
    torch.set_num_interop_threads(args.threads)
    torch.set_num_threads(args.threads)
    try:
        out = selftest() if args.selftest else bench(args)
    except AssertionError as e:
        print(f"torch_qat.py: selftest failed: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
