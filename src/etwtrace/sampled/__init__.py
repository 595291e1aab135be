"""Layer 2: hook-free sampling (--sampled): the BPF sampler's Python side,
reading interpreters from outside, ELF symbols."""
