//! Nothing to use: the crate is its tests (`tests/it`), which check the
//! repository against itself. They live apart from the load test and the
//! product, so each of those compiles only what it uses.
