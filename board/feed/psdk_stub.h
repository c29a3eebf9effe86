/* Stand-ins for the Payload-SDK 3.x names psdk_forward.c uses (from dji_liveview.h and
 * dji_typedef.h), so the example can be syntax-checked without the SDK. Not the SDK. */
#ifndef PSDK_STUB_H
#define PSDK_STUB_H
#include <stdint.h>

typedef uint64_t T_DjiReturnCode;
#define DJI_ERROR_SYSTEM_MODULE_CODE_SUCCESS 0

typedef enum {
    DJI_LIVEVIEW_CAMERA_POSITION_FPV = 7,
    DJI_LIVEVIEW_CAMERA_POSITION_NO_1 = 1,
} E_DjiLiveViewCameraPosition;

typedef enum {
    DJI_LIVEVIEW_CAMERA_SOURCE_DEFAULT = 0,
    DJI_LIVEVIEW_CAMERA_SOURCE_H20_WIDE = 1,
} E_DjiLiveViewCameraSource;

typedef void (*DjiLiveview_H264Callback)(E_DjiLiveViewCameraPosition position,
                                         const uint8_t *buf, uint32_t len);

T_DjiReturnCode DjiLiveview_Init(void);
T_DjiReturnCode DjiLiveview_StartH264Stream(E_DjiLiveViewCameraPosition position,
                                            E_DjiLiveViewCameraSource source,
                                            DjiLiveview_H264Callback callback);
T_DjiReturnCode DjiLiveview_StopH264Stream(E_DjiLiveViewCameraPosition position,
                                           E_DjiLiveViewCameraSource source);
T_DjiReturnCode DjiLiveview_RequestIntraframeFrameData(E_DjiLiveViewCameraPosition position,
                                                       E_DjiLiveViewCameraSource source);
#endif
