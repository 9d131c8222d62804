//! Template builds (E2B's build API): a build starts from a built-in template or another
//! template's build, runs its steps (COPY, RUN, ENV, WORKDIR, USER) inside a sandbox, never on
//! the host, and saves the running sandbox, with its start command up and its ready command
//! passing, as a template that creates restore. Each step's result is a cached layer.
//!
//! - [`spec`]: the steps, checked, and the defaults a template gives its sandboxes;
//! - [`build`]: one build, through [`ember_runtime`];
//! - [`source`]: where a build starts (a built-in template, another build, an OCI image);
//! - [`disk`]: room for the steps, and the template's free space;
//! - [`layers`]: the layer cache; [`guest`]: commands and files in the build sandbox;
//! - [`log`]: the build log the status endpoint pages through.

#![forbid(unsafe_code)]

pub mod build;
pub mod disk;
pub mod guest;
pub mod layers;
pub mod log;
pub mod source;
pub mod spec;

pub use build::{build, BuildConfig, BuildError, BuildSpec, Built, Start, BASE_STEP, FINALIZE_STEP};
pub use layers::Layers;
pub use log::{BuildLog, Entry, Level};
pub use spec::{Defaults, SpecError, Step, StepSpec};
