/*
 * ProcessPrng for Wine before version 9, which has no bcryptprimitives.dll export of it.
 *
 * Rust's standard library (since 1.78) fills its random numbers on Windows by importing
 * ProcessPrng from bcryptprimitives.dll; Windows 10 and later have it, Debian's Wine 8 does
 * not, and a Rust program then fails to start under it. Placed beside a Rust .exe, this DLL
 * answers the import with RtlGenRandom (advapi32's SystemFunction036), which Wine implements.
 * It is built by scripts/windows for the Wine tests only and never shipped: a real Windows host
 * uses its own bcryptprimitives.dll.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
