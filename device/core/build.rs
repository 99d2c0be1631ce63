// Generates the probe macros from the provider definition, the one source of truth.
fn main() {
    println!("cargo:rerun-if-changed=../../dtrace/vnet.d");
    usdt::Builder::new("../../dtrace/vnet.d").build().unwrap();
}
