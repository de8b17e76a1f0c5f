//! sleepy: an LLM inference engine. The path from a model file to text runs through the
//! modules in this order: loader -> config -> model (weights, decoder) -> tokenizer ->
//! generate (sampler, decode loop) -> text.

pub mod backend;
pub mod config;
pub mod error;
pub mod fetch;
pub mod loader;
pub mod model;
pub mod quant;

pub use error::{Error, Result};
pub mod sampler;
pub mod generate;
pub mod engine;
pub mod hf;
pub mod tokenizer;
pub mod chat;
pub mod convert;
pub mod eval;
pub mod tune;
