pub mod decoder;
pub mod weights;

pub use decoder::{Logits, Model, Sequence};
pub use weights::LoadOptions;
