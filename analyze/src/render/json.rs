//! JSON: the report model as is (field names documented on the model types).

use crate::model::Report;

pub fn render(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).expect("report model serialises");
    s.push('\n');
    s
}
