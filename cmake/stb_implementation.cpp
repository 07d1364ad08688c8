// The stb image functions compiled into diffuse, for machines where no libstb is installed
// (Debian's libstb-dev ships them as a shared library, which is used when present).
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>
#include <stb/stb_image_write.h>
