//! The integration tests: one binary (one link, not one per file), a module a stage, shared
//! helpers in `util`. Run one module with `cargo test --release --test integration MODULE::`.

mod util;

mod classify;
mod detect;
mod evaluate;
mod experiment;
mod ingest;
mod label;
mod label_llm;
mod pretrain;
