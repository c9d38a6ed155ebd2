"""tiered_serving: the Ray Serve applications the project ships itself (docs/serving.md).

`tiered_serving.llama_cpp:build_app` is the llama.cpp engine of `engine: llama-cpp` tiers. Never imports the
operator, the router or the test bed.
"""
