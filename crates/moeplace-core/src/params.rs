//! Parameters of placers and dispatchers, each declared once.
//!
//! A [`Param`] is the one place a parameter exists: its name, kind, default, what it
//! does and how settled it is ([`Level`]). Parsing ([`Params::number`] and the other
//! typed getters) takes the default from the declaration, and `moeplace placers`,
//! docs/PARAMETERS.md and the Python docstrings are printed from the same
//! declarations ([`table_markdown`]), so the defaults a user reads are the ones the
//! code uses.

use std::collections::BTreeMap;
use std::fmt;

use crate::placers::PlaceError;

/// What values a parameter takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Any finite number.
    Number,
    /// A weight or threshold: a negative one would turn what it weighs around.
    NonNegative,
    /// A non-negative integer.
    Count,
    /// `true/false` (also `yes/no`, `1/0`).
    Flag,
    /// One of these words.
    Choice(&'static [&'static str]),
}

/// A declared default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Count(usize),
    Flag(bool),
    Word(&'static str),
    /// No fixed value: the code chooses it (the text says how).
    Chosen(&'static str),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(x) => write!(f, "{x}"),
            Value::Count(n) => write!(f, "{n}"),
            Value::Flag(b) => write!(f, "{b}"),
            Value::Word(w) => f.write_str(w),
            Value::Chosen(how) => write!(f, "({how})"),
        }
    }
}

/// How settled a parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Worth setting; kept from release to release.
    Stable,
    /// May change or go; for users who measure what it does on their traffic.
    Experimental,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Stable => "stable",
            Level::Experimental => "experimental",
        }
    }
}

/// One parameter a placer (`plan --param`) or dispatcher (`--dispatcher-param`) takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    /// The value used when the parameter is not given.
    pub default: Value,
    /// What it does, in one or two sentences.
    pub about: &'static str,
    pub level: Level,
}

impl Param {
    /// The default as a user writes it (`--param alpha=0.25`).
    pub fn default_text(&self) -> String {
        self.default.to_string()
    }

    /// Whether the default is a value of the declared kind (checked for every
    /// declaration by a test, so a getter never meets a bad default).
    pub fn is_consistent(&self) -> bool {
        match (self.kind, self.default) {
            (Kind::Number, Value::Number(x)) => x.is_finite(),
            (Kind::NonNegative, Value::Number(x)) => x.is_finite() && x >= 0.0,
            (Kind::Number | Kind::NonNegative | Kind::Count, Value::Chosen(_)) => true,
            (Kind::Count, Value::Count(_)) | (Kind::Flag, Value::Flag(_)) => true,
            (Kind::Choice(words), Value::Word(w)) => words.contains(&w),
            _ => false,
        }
    }

    fn kind_text(&self) -> String {
        match self.kind {
            Kind::Number => "number".into(),
            Kind::NonNegative => "number >= 0".into(),
            Kind::Count => "integer >= 0".into(),
            Kind::Flag => "true/false".into(),
            Kind::Choice(words) => words.join("/"),
        }
    }

    fn mismatch(&self, getter: &str) -> PlaceError {
        PlaceError::BadParam(format!(
            "parameter {} is declared as {}, not read as {getter}",
            self.name,
            self.kind_text()
        ))
    }
}

/// Parameters as `key=value` strings (from `--param` on the command line, or a plan's
/// serving); the typed getters read them against their declarations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    /// Parses `key=value` items.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Params, PlaceError> {
        let mut m = BTreeMap::new();
        for it in items {
            let (k, v) = it
                .split_once('=')
                .ok_or_else(|| PlaceError::BadParam(format!("{it:?} is not of the form key=value")))?;
            if let Some(old) = m.insert(k.trim().to_string(), v.trim().to_string()) {
                return Err(PlaceError::BadParam(format!(
                    "parameter {} is given twice ({old:?} and {:?})",
                    k.trim(),
                    v.trim()
                )));
            }
        }
        Ok(Params(m))
    }

    /// A number parameter (`Number` or `NonNegative`), or its declared default.
    pub fn number(&self, p: &Param) -> Result<f64, PlaceError> {
        let x = match (self.0.get(p.name), p.default) {
            (None, Value::Number(x)) => x,
            (None, _) => return Err(p.mismatch("a number with a default")),
            (Some(v), _) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| PlaceError::BadParam(format!("parameter {}={v:?} is not a number", p.name)))?,
        };
        match p.kind {
            Kind::Number => Ok(x),
            Kind::NonNegative if x < 0.0 => {
                Err(PlaceError::BadParam(format!("parameter {}={x} must not be negative", p.name)))
            }
            Kind::NonNegative => Ok(x),
            _ => Err(p.mismatch("a number")),
        }
    }

    /// A number parameter whose default the code chooses (`None` when not given).
    pub fn chosen_number(&self, p: &Param) -> Result<Option<f64>, PlaceError> {
        if !matches!(p.default, Value::Chosen(_)) {
            return Err(p.mismatch("a number the code chooses"));
        }
        if !self.0.contains_key(p.name) {
            return Ok(None);
        }
        let declared = Param { default: Value::Number(0.0), ..*p };
        self.number(&declared).map(Some)
    }

    /// An integer parameter, or its declared default.
    pub fn count(&self, p: &Param) -> Result<usize, PlaceError> {
        match (p.kind, self.0.get(p.name), p.default) {
            (Kind::Count, None, Value::Count(n)) => Ok(n),
            (Kind::Count, Some(v), _) => v
                .parse::<usize>()
                .map_err(|_| PlaceError::BadParam(format!("parameter {}={v:?} is not a non-negative integer", p.name))),
            _ => Err(p.mismatch("an integer")),
        }
    }

    /// A yes/no parameter (`true/false/yes/no/1/0`), or its declared default.
    pub fn flag(&self, p: &Param) -> Result<bool, PlaceError> {
        match (p.kind, self.0.get(p.name).map(|s| s.to_ascii_lowercase()), p.default) {
            (Kind::Flag, None, Value::Flag(b)) => Ok(b),
            (Kind::Flag, Some(v), _) => match v.as_str() {
                "true" | "yes" | "1" => Ok(true),
                "false" | "no" | "0" => Ok(false),
                _ => Err(PlaceError::BadParam(format!("parameter {}={v:?} is not true or false", p.name))),
            },
            _ => Err(p.mismatch("true/false")),
        }
    }

    /// A word parameter, one of the declared choices, or its declared default.
    pub fn choice(&self, p: &Param) -> Result<&'static str, PlaceError> {
        let (Kind::Choice(words), Value::Word(default)) = (p.kind, p.default) else {
            return Err(p.mismatch("a choice"));
        };
        match self.0.get(p.name) {
            None => Ok(default),
            Some(v) => words.iter().copied().find(|w| w == v).ok_or_else(|| {
                PlaceError::BadParam(format!("parameter {}={v:?} is not one of {}", p.name, words.join(", ")))
            }),
        }
    }

    /// Refuses keys not declared, so typos do not pass silently; `owner` names what
    /// takes them ("placer tacg", "dispatcher gesr") and `hint` where they are explained.
    pub fn check_declared(&self, declared: &[Param], owner: &str, hint: &str) -> Result<(), PlaceError> {
        for k in self.0.keys() {
            if !declared.iter().any(|d| d.name == k) {
                let names: Vec<&str> = declared.iter().map(|d| d.name).collect();
                return Err(PlaceError::BadParam(format!(
                    "{owner} has no parameter {k:?} (it takes: {}{hint})",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") },
                )));
            }
        }
        Ok(())
    }

    /// Reads every declared parameter by its kind: an error names the first value of
    /// the wrong kind (a placer may still refuse a value out of its range).
    pub fn check_values(&self, declared: &[Param]) -> Result<(), PlaceError> {
        for p in declared {
            match (p.kind, p.default) {
                (_, Value::Chosen(_)) => self.chosen_number(p).map(|_| ())?,
                (Kind::Number | Kind::NonNegative, _) => self.number(p).map(|_| ())?,
                (Kind::Count, _) => self.count(p).map(|_| ())?,
                (Kind::Flag, _) => self.flag(p).map(|_| ())?,
                (Kind::Choice(_), _) => self.choice(p).map(|_| ())?,
            }
        }
        Ok(())
    }

    /// The parameters among these that are declared.
    pub fn only(&self, declared: &[Param]) -> Params {
        Params(
            self.0
                .iter()
                .filter(|(k, _)| declared.iter().any(|d| d.name == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// These parameters over `base`: a key given here wins.
    pub fn over(&self, base: &Params) -> Params {
        let mut m = base.0.clone();
        m.extend(self.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        Params(m)
    }
}

/// A named operating point: settings of a placer and of its serving chosen together
/// for one purpose (`plan --preset NAME`). Parameters the user gives win over it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// What it is for, in one sentence.
    pub about: &'static str,
    pub placer: &'static [(&'static str, &'static str)],
    /// Serving parameters (the placer's dispatcher's).
    pub serving: &'static [(&'static str, &'static str)],
}

impl Preset {
    pub fn placer_params(&self) -> Params {
        Params(self.placer.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    pub fn serving_params(&self) -> Params {
        Params(self.serving.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// One line: `alpha=0 locality=0.25; serving theta=1`.
    pub fn settings(&self) -> String {
        let join = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        match (self.placer.is_empty(), self.serving.is_empty()) {
            (_, true) => join(self.placer),
            (true, false) => format!("serving {}", join(self.serving)),
            (false, false) => format!("{}; serving {}", join(self.placer), join(self.serving)),
        }
    }
}

/// A Markdown table of parameters (name, kind, default, level, what it does), as
/// docs/PARAMETERS.md and the Python docstrings print them.
pub fn table_markdown(params: &[Param]) -> String {
    let mut s = String::from("| parameter | values | default | level | what it does |\n|---|---|---|---|---|\n");
    for p in params {
        s.push_str(&format!(
            "| `{}` | {} | `{}` | {} | {} |\n",
            p.name,
            p.kind_text(),
            p.default_text(),
            p.level.name(),
            p.about.replace('|', "\\|")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Param =
        Param { name: "w", kind: Kind::NonNegative, default: Value::Number(0.5), about: "", level: Level::Stable };
    const N: Param = Param { name: "n", kind: Kind::Count, default: Value::Count(3), about: "", level: Level::Stable };
    const F: Param =
        Param { name: "f", kind: Kind::Flag, default: Value::Flag(true), about: "", level: Level::Experimental };
    const C: Param = Param {
        name: "c",
        kind: Kind::Choice(&["a", "b"]),
        default: Value::Word("a"),
        about: "",
        level: Level::Stable,
    };
    const R: Param = Param {
        name: "r",
        kind: Kind::NonNegative,
        default: Value::Chosen("the knee"),
        about: "",
        level: Level::Stable,
    };

    #[test]
    fn absent_parameters_take_the_declared_default() {
        let p = Params::default();
        assert_eq!(p.number(&W), Ok(0.5));
        assert_eq!(p.count(&N), Ok(3));
        assert_eq!(p.flag(&F), Ok(true));
        assert_eq!(p.choice(&C), Ok("a"));
        assert_eq!(p.chosen_number(&R), Ok(None));
    }

    #[test]
    fn given_parameters_are_parsed_and_checked() {
        let p = Params::parse(["w=2", "n=7", "f=no", "c=b", "r=1.5"]).unwrap();
        assert_eq!(p.number(&W), Ok(2.0));
        assert_eq!(p.count(&N), Ok(7));
        assert_eq!(p.flag(&F), Ok(false));
        assert_eq!(p.choice(&C), Ok("b"));
        assert_eq!(p.chosen_number(&R), Ok(Some(1.5)));
        for (bad, param) in [("w=-1", &W), ("w=nan", &W), ("n=-1", &N), ("f=maybe", &F), ("c=z", &C), ("r=-2", &R)] {
            let p = Params::parse([bad]).unwrap();
            let err = match param.kind {
                Kind::Count => p.count(param).err(),
                Kind::Flag => p.flag(param).err(),
                Kind::Choice(_) => p.choice(param).err(),
                _ if param.name == "r" => p.chosen_number(param).err(),
                _ => p.number(param).err(),
            };
            let text = err.expect(bad).to_string();
            assert!(text.contains(param.name), "{bad}: {text}");
        }
    }

    #[test]
    fn a_getter_of_the_wrong_kind_is_an_error_not_a_default() {
        let p = Params::default();
        assert!(p.number(&N).is_err());
        assert!(p.count(&W).is_err());
        assert!(p.flag(&C).is_err());
        assert!(p.choice(&F).is_err());
        assert!(p.number(&R).is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_what_is_known() {
        let p = Params::parse(["typo=1"]).unwrap();
        let e = p.check_declared(&[W, N], "placer x", "").unwrap_err().to_string();
        assert!(e.contains("placer x has no parameter \"typo\" (it takes: w, n)"), "{e}");
        assert_eq!(Params::parse(["w=1", "typo=1"]).unwrap().only(&[W]), Params::parse(["w=1"]).unwrap());
    }

    #[test]
    fn defaults_print_as_users_write_them() {
        assert_eq!(W.default_text(), "0.5");
        assert_eq!(Param { default: Value::Number(8.0), ..W }.default_text(), "8");
        assert_eq!(R.default_text(), "(the knee)");
        assert!(table_markdown(&[W, C]).contains("| `c` | a/b | `a` | stable |"));
    }
}
