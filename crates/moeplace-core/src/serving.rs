//! How a plan is served: the dispatcher that picks a replica for every token pick,
//! that dispatcher's parameters, and the rule that gives each request its home GPU.
//! Every placer declares the serving it was designed for ([`Placer::serving`]); a
//! plan records it, and `eval`, `demo` and the Python package replay a plan the way
//! it says unless told otherwise.
//!
//! [`Placer::serving`]: crate::placers::Placer::serving

use std::collections::BTreeMap;

use crate::dispatch::{self, Dispatcher};
use crate::placers::{Params, PlaceError};
use crate::simulate::HomePolicy;

/// Where requests are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Homes {
    /// Round-robin over all GPUs, in order of first appearance.
    RoundRobin,
    /// Round-robin within the GPUs the plan's `family_gpus` gives the request's
    /// family; requests of families it does not name (and plans without it) go
    /// round-robin over all GPUs.
    Family,
}

impl Homes {
    /// Names in plan files and on the command line.
    pub const NAMES: &'static [&'static str] = &["rr", "family"];

    pub fn name(self) -> &'static str {
        match self {
            Homes::RoundRobin => "rr",
            Homes::Family => "family",
        }
    }

    pub fn parse(s: &str) -> Option<Homes> {
        match s {
            "rr" => Some(Homes::RoundRobin),
            "family" => Some(Homes::Family),
            _ => None,
        }
    }

    /// Words for tables.
    pub fn describe(self) -> &'static str {
        match self {
            Homes::RoundRobin => "round-robin",
            Homes::Family => "by family_gpus",
        }
    }
}

/// How a plan is served.
#[derive(Clone, Debug, PartialEq)]
pub struct Serving {
    /// A registered dispatcher (`dispatch::names()`).
    pub dispatcher: String,
    /// The dispatcher's parameters (those it declares; absent ones take their default).
    pub params: Params,
    pub homes: Homes,
}

impl Default for Serving {
    /// The serving of plans that name none (written before plans recorded it): the
    /// `nearest` dispatcher, requests round-robin.
    fn default() -> Serving {
        Serving::new("nearest", Homes::RoundRobin)
    }
}

impl Serving {
    pub fn new(dispatcher: &str, homes: Homes) -> Serving {
        Serving { dispatcher: dispatcher.to_string(), params: Params::default(), homes }
    }

    /// The same serving with parameter `key` set to `value`.
    pub fn with_param(mut self, key: &str, value: &str) -> Serving {
        self.params.0.insert(key.to_string(), value.to_string());
        self
    }

    /// Checks the dispatcher exists and takes these parameters with valid values.
    pub fn check(&self) -> Result<(), PlaceError> {
        self.dispatcher(0).map(|_| ())
    }

    /// The dispatcher this serving names, configured (`seed` drives the seeded ones).
    pub fn dispatcher(&self, seed: u64) -> Result<Box<dyn Dispatcher>, PlaceError> {
        dispatch::build(&self.dispatcher, &self.params, seed)
    }

    /// The home policy for a plan with `family_gpus`.
    pub fn home_policy(&self, family_gpus: Option<&BTreeMap<String, Vec<usize>>>) -> HomePolicy {
        match (self.homes, family_gpus) {
            (Homes::Family, Some(f)) => HomePolicy::Family(f.clone()),
            _ => HomePolicy::RoundRobin,
        }
    }

    /// One line: `gesr theta=1.5 free_first=true, homes family`.
    pub fn label(&self) -> String {
        let mut s = self.dispatcher.clone();
        for (k, v) in &self.params.0 {
            s.push_str(&format!(" {k}={v}"));
        }
        s.push_str(&format!(", homes {}", self.homes.name()));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dispatcher_builds_with_its_declared_defaults() {
        for d in dispatch::registry(0) {
            let mut params = Params::default();
            for p in d.params() {
                params.0.insert(p.name.to_string(), p.default_text());
            }
            let built = dispatch::build(d.name(), &params, 0).unwrap();
            assert_eq!(built.name(), d.name());
        }
    }

    #[test]
    fn unknown_dispatchers_and_parameters_are_refused() {
        let e = Serving::new("nearest", Homes::RoundRobin).with_param("theta", "1").check().unwrap_err();
        assert!(e.to_string().contains("dispatcher nearest has no parameter \"theta\""), "{e}");
        assert!(Serving::new("fastest", Homes::RoundRobin).check().is_err());
        let e = Serving::new("gesr", Homes::RoundRobin).with_param("theta", "-1").check().unwrap_err();
        assert!(e.to_string().contains("theta"), "{e}");
        assert!(Serving::new("gesr", Homes::Family).with_param("free_first", "yes").check().is_ok());
    }
}
