fn main() {
    println!("asyncthink");
}
