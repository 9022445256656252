fn main() -> anyhow::Result<()> {
    wharf::cli::main()
}
