#!/usr/bin/python3
"""PyTorch fp32 greedy decoding with a key/value cache: the baseline for
qatc's incremental decoder (issue 12).

Builds the architecture of a testmodels transformer (the demo model, or one
made by `go run ./testmodels/build`) in PyTorch from its ONNX file's
weights and its `qatc.testmodel` metadata, then translates token-id
sources greedily exactly as `qatc translate` does: sources sorted by
length, batches of --batch, the encoder once per batch, one decoder step
per token with cached self-attention keys and values and cross-attention
keys and values computed once, finished sentences leaving the batch, at
most source length + --max-extra tokens. It prints the translations
(token ids, one line per source, in input order) to --output and the
timing to stderr, so that both the speed and the translations can be
compared with qatc's.

    /usr/bin/python3 scripts/bench/torch_decode.py MODEL.onnx --src test.ids \
        --threads 2 --output torch.hyp

Needs Debian's python3 with torch and onnx; qatc never needs it.
"""

import argparse
import json
import math
import os
import sys
import time


def args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--src", required=True, help="token ids, one sentence per line (EOS is appended)")
    ap.add_argument("--output", help="translations as token ids (default: none)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-extra", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="timed decodes; the median is reported")
    ap.add_argument("--pad-id", type=int, default=0)
    ap.add_argument("--bos-id", type=int, default=2)
    ap.add_argument("--eos-id", type=int, default=3)
    return ap.parse_args()


A = args()
# Set before torch loads (as torch_qat.py does): OpenMP threads that spin
# while they wait starve on a shared machine (on 2 busy cores, 2 spinning
# threads decoded 24x slower than 1), and Debian's torch multiplies through
# OpenBLAS, which otherwise takes a thread per core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(A.threads))

import onnx  # noqa: E402
import onnx.numpy_helper  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def load(path):
    m = onnx.load(path)
    meta = {p.key: p.value for p in m.metadata_props}
    if "qatc.testmodel" not in meta:
        sys.exit(f"{path}: no qatc.testmodel metadata: this script reads testmodels transformers")
    cfg = json.loads(meta["qatc.testmodel"])
    if cfg.get("FusedQKV"):
        sys.exit(f"{path}: fused QKV kernels are not supported by this script")
    w = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in m.graph.initializer}
    return cfg, w


class Model:
    """The testmodels transformer (testmodels/doc.go) over the ONNX weights."""

    def __init__(self, cfg, w):
        self.c, self.w = cfg, w
        self.d, self.h = cfg["Hidden"], cfg["Heads"]
        self.dh = self.d // self.h
        self.pre = cfg["PreNorm"]
        self.gelu = cfg.get("Activation", "relu") == "gelu"
        self.eps = 1e-6
        if cfg["SharedEmbeddings"]:
            self.src_table = self.tgt_table = w["shared_embedding"]
            self.out_kernel = w["shared_embedding"].t()
        else:
            self.src_table, self.tgt_table = w["encoder/embedding"], w["decoder/embedding"]
            self.out_kernel = w["softmax/kernel"]
        self.out_bias = w["softmax/bias"]
        self.pos = w["position_embedding"]
        self.scale = math.sqrt(self.d)

    def dense(self, scope, x):
        return torch.addmm(self.w[scope + "/bias"], x.reshape(-1, x.shape[-1]), self.w[scope + "/kernel"]).reshape(*x.shape[:-1], -1)

    def ln(self, scope, x):
        return F.layer_norm(x, (self.d,), self.w[scope + "/gamma"], self.w[scope + "/beta"], self.eps)

    def heads(self, x):  # [b, t, d] -> [b, h, t, dh]
        b, t, _ = x.shape
        return x.view(b, t, self.h, self.dh).transpose(1, 2)

    def attend(self, scope, q, k, v, bias):
        q = q / math.sqrt(self.dh)
        s = torch.matmul(q, k.transpose(-1, -2))
        if bias is not None:
            s = s + bias
        p = torch.softmax(s, dim=-1)
        ctx = torch.matmul(p, v).transpose(1, 2).reshape(q.shape[0], -1, self.d)
        return self.dense(scope + "/output", ctx)

    def sublayer(self, scope, x, f):
        if self.pre:
            return x + f(self.ln(scope + "/ln", x))
        return self.ln(scope + "/ln", x + f(x))

    def ffn(self, scope, x):
        y = self.dense(scope + "/dense1", x)
        y = F.gelu(y) if self.gelu else F.relu(y)
        return self.dense(scope + "/dense2", y)

    def encode(self, ids, pad_bias):
        x = self.src_table[ids] * self.scale + self.pos[: ids.shape[1]]
        for i in range(self.c["EncoderLayers"]):
            s = f"encoder/layer_{i}"

            def attn(y, s=s):
                return self.attend(s + "/self_attention", self.heads(self.dense(s + "/self_attention/q", y)),
                                   self.heads(self.dense(s + "/self_attention/k", y)),
                                   self.heads(self.dense(s + "/self_attention/v", y)), pad_bias)
            x = self.sublayer(s + "/self_attention", x, attn)
            x = self.sublayer(s + "/ffn", x, lambda y, s=s: self.ffn(s + "/ffn", y))
        return self.ln("encoder/ln", x) if self.pre else x

    def cross_cache(self, enc):
        out = []
        for i in range(self.c["DecoderLayers"]):
            s = f"decoder/layer_{i}/encdec_attention"
            out.append((self.heads(self.dense(s + "/k", enc)), self.heads(self.dense(s + "/v", enc))))
        return out

    def step(self, tokens, pos, cache, cross, pad_bias):
        """One decoder step: tokens [b], position pos; cache holds each
        layer's self-attention keys and values [b, h, pos, dh] (None at 0)."""
        x = self.tgt_table[tokens][:, None, :] * self.scale + self.pos[pos]
        for i in range(self.c["DecoderLayers"]):
            s = f"decoder/layer_{i}"

            def self_attn(y, i=i, s=s):
                k = self.heads(self.dense(s + "/self_attention/k", y))
                v = self.heads(self.dense(s + "/self_attention/v", y))
                if cache[i] is not None:
                    k = torch.cat([cache[i][0], k], dim=2)
                    v = torch.cat([cache[i][1], v], dim=2)
                cache[i] = (k, v)
                return self.attend(s + "/self_attention", self.heads(self.dense(s + "/self_attention/q", y)), k, v, None)

            def cross_attn(y, i=i, s=s):
                return self.attend(s + "/encdec_attention", self.heads(self.dense(s + "/encdec_attention/q", y)),
                                   cross[i][0], cross[i][1], pad_bias)
            x = self.sublayer(s + "/self_attention", x, self_attn)
            x = self.sublayer(s + "/encdec_attention", x, cross_attn)
            x = self.sublayer(s + "/ffn", x, lambda y, s=s: self.ffn(s + "/ffn", y))
        if self.pre:
            x = self.ln("decoder/ln", x)
        return torch.addmm(self.out_bias, x[:, 0], self.out_kernel)


def greedy(model, srcs, pad, bos, eos, max_extra):
    """Greedy decoding of one batch with the cache; finished rows leave."""
    n, s = len(srcs), max(len(x) for x in srcs)
    ids = torch.full((n, s), pad, dtype=torch.long)
    for r, x in enumerate(srcs):
        ids[r, : len(x)] = torch.tensor(x)
    pad_bias = (ids == pad).float()[:, None, None, :] * -1e9
    enc = model.encode(ids, pad_bias)
    cross = model.cross_cache(enc)
    cache = [None] * model.c["DecoderLayers"]
    active = list(range(n))
    out = [[] for _ in range(n)]
    tokens = torch.full((n,), bos, dtype=torch.long)
    limits = [len(x) + max_extra for x in srcs]
    pos = 0
    while active:
        logits = model.step(tokens, pos, cache, cross, pad_bias)
        best = torch.argmax(logits, dim=-1).tolist()
        keep, nxt = [], []
        for r, i in enumerate(active):
            if best[r] == eos:
                continue
            out[i].append(best[r])
            if len(out[i]) >= limits[i]:
                continue
            keep.append(r)
            nxt.append(best[r])
        pos += 1
        if len(keep) < len(active) and keep:
            idx = torch.tensor(keep)
            cache = [(k[idx], v[idx]) for k, v in cache]
            cross = [(k[idx], v[idx]) for k, v in cross]
            pad_bias = pad_bias[idx]
        active = [active[r] for r in keep]
        tokens = torch.tensor(nxt, dtype=torch.long)
    return out


def main():
    a = A
    torch.set_num_threads(a.threads)
    cfg, w = load(a.model)
    model = Model(cfg, w)
    srcs = [[int(t) for t in line.split()] + [a.eos_id] for line in open(a.src) if line.strip()]
    order = sorted(range(len(srcs)), key=lambda i: -len(srcs[i]))
    out = [None] * len(srcs)

    def run():
        with torch.inference_mode():
            for start in range(0, len(order), a.batch):
                idx = order[start: start + a.batch]
                for i, hyp in zip(idx, greedy(model, [srcs[i] for i in idx], a.pad_id, a.bos_id, a.eos_id, a.max_extra)):
                    out[i] = hyp
    run()  # warm-up
    times = []
    for _ in range(a.rounds):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    print(f"torch {torch.__version__} fp32 greedy with a KV cache, {a.threads} threads: {len(srcs)} sentences in "
          f"{med:.3f} s (median of {a.rounds}), {len(srcs) / med:.1f} sentences/s", file=sys.stderr)
    if a.output:
        with open(a.output, "w") as f:
            for hyp in out:
                f.write(" ".join(map(str, hyp)) + "\n")


if __name__ == "__main__":
    main()
