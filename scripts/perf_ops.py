#!/usr/bin/env python3
"""Per-op breakdown of a `perf record --call-graph dwarf` profile of longtail (Burn flex).

Reads `perf script -F tid,ip,sym` output on stdin and attributes each sample to one
category by the frames of its call stack: the first rule (top to bottom) whose pattern
occurs anywhere in the stack wins. Samples in rayon worker threads have lost their
caller's frames (the stack ends at the pool), so they are attributed by their own frames
(a conv's GEMM or im2col, a matmul, an element-wise kernel). Prints a table: category,
share of samples, and (with --callers) the most frequent leaf functions per category.

    perf record -F 999 --call-graph dwarf,16384 -o p.data -- longtail ...
    perf script -i p.data -F tid,ip,sym | scripts/perf_ops.py [--callers] [--title T]

docs/benchmarks.md ("Where the time goes, per op") explains the categories.
"""
import argparse
import collections
import re
import sys

# (category, regex over the whole stack, leaf first, joined by "\n"). Order matters.
RULES = [
    # Outside the optimisation loop / inference pass.
    ("startup, reading input, tokenizing", r"longtail::classify::data::load|encode_all|longtail::io::read|load_lines|split_train_val|parquet::|arrow_"),
    ("saving weights / checkpoint", r"save_weights|save_checkpoint_weights|BurnpackStore|SafetensorsStore|into_bytes"),
    ("host-side batching (make_batches, HostBatch)", r"epoch_batches|make_batches|HostBatch|for_group|set_row|bucket_by_length"),
    ("validation pass (inference)", r"as longtail::train::Task>::validate"),
    ("optimizer step (AdamW + clipping)", r"burn_optim::"),
    ("scoring summaries (summarize)", r"autoencoder::summarize"),
    # Model ops: forward (by the backend op) and backward (by the autodiff step).
    ("conv1d backward: input grad (conv_transpose1d)", r"conv1d_x_backward|conv_transpose"),
    ("conv1d backward: weight grad (conv1d on swapped dims)", r"conv1d_weight_backward|conv1d_weight_grad"),
    ("conv1d backward: bias grad", r"conv1d_bias_backward"),
    ("conv1d forward (im2col + GEMM)", r"Flex>::conv1d\n|burn_flex::ops::conv::|expand_1d_to_3d"),
    ("embedding backward", r"embedding_backward"),
    ("embedding forward", r"Flex>::embedding\n"),
    ("dropout masks (random Bernoulli)", r"float_random|TensorData::random|ElementRandom|DistributionSampler|Distribution::sampler|chacha|Bernoulli"),
    ("attention softmax", r"activation::softmax|softmax"),
    ("log_softmax + gather (output head loss)", r"log_softmax|float_gather|gather_scatter::gather"),
    ("layer norm", r"LayerNorm|layer_norm"),
    ("GELU", r"gelu|\berff?\b|libm::"),
    ("matmul (linear layers, attention)", r"matmul"),
    ("max / mean pooling (fwd + scatter bwd)", r"max_dim|float_scatter|scatter_add"),
    ("mask_fill / where", r"mask_fill|mask_where"),
    ("swap_dims / reshape copies", r"copy_2d_tiled|swap_dims|into_contiguous|float_reshape|permute"),
    ("reductions (sum, mean)", r"reduce::|sum_dim|float_sum|float_mean"),
    ("element-wise (add, mul, relu, exp, ...)", r"binary_op|unary_op|scalar_op|zip_apply|macerator|clamp|float_cat|cat::cat"),
    ("zeros / empty tensors", r"float_empty|float_zeros|__memset"),
    ("autodiff graph bookkeeping", r"burn_autodiff::"),
    ("allocation / page faults / memcpy", r"malloc|free|mmap|munmap|page_fault|clear_page|memmove|memcpy|__rust_alloc|__rust_dealloc|realloc"),
    ("rayon scheduling / idle", r"rayon_core::|crossbeam|sched_yield|futex"),
]
# A rayon worker's stack stops at the pool: the op that spawned the job is unknown, and a
# conv's GEMM may be the forward or the weight gradient (Burn computes it as a conv1d).
WORKER_RULES = [
    ("conv1d backward: input grad (conv_transpose1d)", r"conv_transpose"),
    ("conv1d forward or weight grad (GEMM in a rayon worker)", r"burn_flex::ops::conv::"),
    ("matmul (linear layers, attention)", r"matmul"),
    ("attention softmax", r"softmax"),
    ("layer norm", r"layer_norm"),
    ("swap_dims / reshape copies", r"copy_2d_tiled"),
    ("element-wise (add, mul, relu, exp, ...)", r"binary_op|unary_op|scalar_op|zip_|macerator"),
    ("reductions (sum, mean)", r"reduce::"),
    ("max / mean pooling (fwd + scatter bwd)", r"scatter"),
    ("GEMM in a rayon worker (conv or matmul: caller unknown)", r"gemm"),
    ("rayon worker: other closures, scheduling", r""),
]
WORKER = re.compile(r"rayon_core::registry::(WorkerThread|ThreadBuilder)")
COMPILED = [(name, re.compile(p)) for name, p in RULES]
WORKER_COMPILED = [(name, re.compile(p)) for name, p in WORKER_RULES]
LEAF_ALLOC = re.compile(r"page_fault|clear_page|__memset|__memmove|__memcpy|malloc|_int_free|cfree|munmap|mmap|__rust_alloc|__rust_dealloc|unmap_page|zap_pte")


def samples(stream):
    frames, head = [], None
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head, frames
            frames, head = [], None
        elif head is None:
            head = line.strip()
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    if head is not None:
        yield head, frames


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", action="store_true", help="show the top leaf functions per category")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    counts = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    alloc_leaf = 0
    total = 0
    for _, frames in samples(sys.stdin):
        if not frames:
            continue
        total += 1
        stack = "\n".join(frames) + "\n"
        rules = WORKER_COMPILED if WORKER.search(stack) and "longtail::" not in stack else COMPILED
        cat = next((name for name, rx in rules if rx.search(stack)), "other")
        counts[cat] += 1
        leaves[cat][frames[0][:90]] += 1
        if LEAF_ALLOC.search(frames[0]):
            alloc_leaf += 1
    if not total:
        sys.exit("no samples")
    if args.title:
        print(f"{args.title}: {total} samples")
    print("| category | share |")
    print("|---|---:|")
    for cat, n in counts.most_common():
        print(f"| {cat} | {100 * n / total:.1f}% |")
        if args.callers:
            for leaf, m in leaves[cat].most_common(4):
                print(f"|   {leaf} | {100 * m / total:.1f}% |")
    print(f"| *(across all categories: leaf in allocation, page faults, memset/memcpy)* | *{100 * alloc_leaf / total:.1f}%* |")


if __name__ == "__main__":
    main()
