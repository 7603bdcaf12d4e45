throw new Error('ts-mls is not available in the interop suite (group chat is outside the relay path)')
