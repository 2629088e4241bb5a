//! The KS2 release pipeline: synthetic intakes, validation against the data contract,
//! the result rules, and publishing immutable, precomputed releases to an object store.

pub mod correct;
pub mod domain;
pub mod generate;
pub mod intake;
pub mod model;
pub mod outputs;
pub mod publish;
pub mod report;
pub mod rules;
pub mod store;
pub mod validate;
