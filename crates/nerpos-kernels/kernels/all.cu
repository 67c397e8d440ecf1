// Every kernel of nerpos-kernels in one translation unit: what build.rs compiles into the fatbin and
// what the emulator library (emu/lib.cpp) builds for the CPU. A new kernel file is one more line here.
#include "columns.cu"
#include "layer_norm.cu"
#include "gelu.cu"
#include "residual.cu"
#include "attention.cu"
#include "attention_tc.cu"
#include "cross_entropy.cu"
#include "dropout_masks.cu"
#include "adamw.cu"
#include "multi_tensor.cu"
#include "embedding.cu"
