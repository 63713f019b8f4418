// Picks the kernel table for this CPU once: the best instruction set that was compiled in and
// that the CPU and OS support, or the one FASTXENT_ISA names.
#pragma once
#include <string>
#include <vector>

#include "kernel_table.h"

namespace fastxent {

// Compiled in and supported here, from the baseline up ("scalar" first).
std::vector<const KernelTable*> supported_tables();
// The table in use. Throws std::invalid_argument for a bad FASTXENT_ISA.
const KernelTable& active_table();
// Switch to a named ISA from supported_tables(); throws std::invalid_argument otherwise.
void select_isa(const std::string& name);

}  // namespace fastxent
