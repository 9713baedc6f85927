//! A `--filter` compiled against one plan: field names become indices into its values, so a
//! hit is tested without looking names up.

use dprobe_spec::{compare, CmpOp, Filter, Literal};

use super::values::Values;

/// A filter bound to a plan's arguments.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Cmp { index: Option<usize>, op: CmpOp, value: Literal },
    And(Box<Test>, Box<Test>),
    Or(Box<Test>, Box<Test>),
    Not(Box<Test>),
}

impl Test {
    /// Bind `filter` to arguments named `names`; a field the plan does not fetch never
    /// matches (as the kernel's filter treats an unknown field).
    pub(crate) fn compile(filter: &Filter, names: &[&str]) -> Test {
        match filter {
            Filter::Cmp { field, op, value } => {
                Test::Cmp { index: names.iter().position(|n| n == field), op: *op, value: value.clone() }
            }
            Filter::And(a, b) => Test::And(Box::new(Test::compile(a, names)), Box::new(Test::compile(b, names))),
            Filter::Or(a, b) => Test::Or(Box::new(Test::compile(a, names)), Box::new(Test::compile(b, names))),
            Filter::Not(a) => Test::Not(Box::new(Test::compile(a, names))),
        }
    }

    /// Whether `values` pass; a fault or a string compared with a number does not.
    pub(crate) fn passes(&self, values: &Values) -> bool {
        match self {
            Test::And(a, b) => a.passes(values) && b.passes(values),
            Test::Or(a, b) => a.passes(values) || b.passes(values),
            Test::Not(a) => !a.passes(values),
            Test::Cmp { index, op, value } => {
                let got = index.and_then(|i| values.get(i));
                compare(got.as_ref().and_then(|v| v.filter_value()), *op, value)
            }
        }
    }
}
