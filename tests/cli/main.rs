//! Black-box tests of the gimlet binary.

mod generated;
