//! Generated files (man page, completions) match the clap definition.
