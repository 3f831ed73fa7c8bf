// The CUDA emulator stands in for the toolkit header of this name.
#pragma once
#include "cuda_emulator.h"
